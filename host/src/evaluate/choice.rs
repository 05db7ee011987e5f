//! Multiple-choice accuracy scored as lm-evaluation-harness scores `multiple_choice` tasks: each choice is a
//! continuation of the question, ranked by its log-likelihood under the model. Context
//! `"Question: {question}\nAnswer:"`, continuation `" {choice}"`; the continuation's tokens are those of
//! encode(context + continuation) past the first len(encode(context)) (lm-eval's split), no special tokens;
//! log-likelihood = Σ log-softmax(logits of the previous position) at the token, in f64. `length_normalized` ranks by
//! log-likelihood per character of the continuation (lm-eval's `acc_norm`). Ties go to the first choice.
//! Records: JSON objects `{"question": str, "choices": [str, ...], "answer": index}`
//! (data/multiple_choice.jsonl, written for this project).

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::runner::Runner;

/// One question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub question: String,
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub answer: usize,
}

/// The project's multiple-choice set (data/multiple_choice.jsonl).
pub const DEFAULT_CHOICES: &str = include_str!("../../../data/multiple_choice.jsonl");

/// Parses JSON Lines of [`Question`]s; `origin` names the source in errors.
pub fn parse_questions(text: &str, origin: &str) -> anyhow::Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line).map_err(|e| {
            anyhow!(
                "{origin}:{}: {e} (expected {{\"question\", \"choices\", \"answer\"}})",
                i + 1
            )
        })?;
        check(&q).with_context(|| format!("{origin}:{}", i + 1))?;
        out.push(q);
    }
    if out.is_empty() {
        bail!("{origin}: no questions");
    }
    Ok(out)
}

/// A record of a dataset as a [`Question`].
pub fn question_of(
    fields: &serde_json::Map<String, serde_json::Value>,
    origin: &str,
) -> anyhow::Result<Question> {
    let q: Question =
        serde_json::from_value(serde_json::Value::Object(fields.clone())).map_err(|e| {
            anyhow!("{origin}: {e} (expected {{\"question\", \"choices\", \"answer\"}})")
        })?;
    check(&q).with_context(|| origin.to_string())?;
    Ok(q)
}

fn check(q: &Question) -> anyhow::Result<()> {
    if q.choices.len() < 2 {
        bail!(
            "\"choices\" has {} entries; a question needs at least 2",
            q.choices.len()
        );
    }
    if q.answer >= q.choices.len() {
        bail!(
            "\"answer\" {} is not an index of the {} choices",
            q.answer,
            q.choices.len()
        );
    }
    if q.question.trim().is_empty() || q.choices.iter().any(|c| c.trim().is_empty()) {
        bail!("empty question or choice");
    }
    Ok(())
}

/// How one question was scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// Log-likelihood of each choice.
    pub loglik: Vec<f64>,
    /// Continuation tokens of each choice.
    pub tokens: Vec<usize>,
    /// The chosen index.
    pub predicted: usize,
    pub answer: usize,
}

/// Context and continuation ids of one choice.
pub fn encode_choice(
    tok: &Tokenizer,
    question: &str,
    choice: &str,
) -> anyhow::Result<(Vec<u32>, usize)> {
    let context = format!("Question: {question}\nAnswer:");
    let enc = |s: String| -> anyhow::Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| anyhow!("tokenizing a question: {e}"))?
            .get_ids()
            .to_vec())
    };
    let ctx_len = enc(context.clone())?.len();
    let whole = enc(format!("{context} {choice}"))?;
    if ctx_len == 0 || whole.len() <= ctx_len {
        bail!("the choice {choice:?} of {question:?} adds no tokens past the question");
    }
    Ok((whole, ctx_len))
}

/// Log-likelihood of `cont` from the logits of the rows predicting it: [cont.len(), vocab].
pub fn continuation_loglik(logits: &[f32], cont: &[u32]) -> f64 {
    let vocab = logits.len() / cont.len().max(1);
    logits
        .chunks_exact(vocab)
        .zip(cont)
        .map(|(row, &next)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
            row[next as usize] as f64 - max - log_sum
        })
        .sum()
}

/// Scores every question; returns the accuracy in [0, 1] and each question's scores.
pub fn accuracy(
    runner: &mut Runner,
    tok: &Tokenizer,
    questions: &[Question],
    length_normalized: bool,
) -> anyhow::Result<(f64, Vec<Scored>)> {
    if questions.is_empty() {
        bail!("no questions to score");
    }
    let bar = crate::progress::bar(questions.len() as u64, "accuracy_score");
    let mut scored = Vec::with_capacity(questions.len());
    for q in questions {
        let encoded = q
            .choices
            .iter()
            .map(|c| encode_choice(tok, &q.question, c))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some((whole, _)) = encoded
            .iter()
            .find(|(w, _)| w.len() > runner.context_length())
        {
            bail!(
                "question {:?} is {} tokens with a choice, past the model's context length {}",
                q.question,
                whole.len(),
                runner.context_length()
            );
        }
        // choices whose context tokens agree share one prefix run (all of them, unless a tokenizer merges
        // across the boundary)
        let mut loglik = vec![0.0; encoded.len()];
        let mut done = vec![false; encoded.len()];
        for i in 0..encoded.len() {
            if done[i] {
                continue;
            }
            let prefix = &encoded[i].0[..encoded[i].1];
            let group: Vec<usize> = (i..encoded.len())
                .filter(|&j| !done[j] && &encoded[j].0[..encoded[j].1] == prefix)
                .collect();
            let conts: Vec<&[u32]> = group
                .iter()
                .map(|&j| &encoded[j].0[encoded[j].1..])
                .collect();
            let logits = runner.continuation_logits(prefix, &conts)?;
            for ((&j, cont), l) in group.iter().zip(&conts).zip(&logits) {
                loglik[j] = continuation_loglik(l, cont);
                done[j] = true;
            }
        }
        let tokens: Vec<usize> = encoded.iter().map(|(w, c)| w.len() - c).collect();
        let rank = |i: usize| {
            if length_normalized {
                loglik[i] / (q.choices[i].chars().count() + 1) as f64
            } else {
                loglik[i]
            }
        };
        let predicted =
            (1..loglik.len()).fold(0, |best, i| if rank(i) > rank(best) { i } else { best });
        scored.push(Scored {
            loglik,
            tokens,
            predicted,
            answer: q.answer,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let right = scored.iter().filter(|s| s.predicted == s.answer).count();
    Ok((right as f64 / scored.len() as f64, scored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_set_is_well_formed() {
        let qs = parse_questions(DEFAULT_CHOICES, "data/multiple_choice.jsonl").unwrap();
        assert!(qs.len() >= 100, "{} questions", qs.len());
        assert!(qs.iter().all(|q| q.choices.len() == 4));
        // answers spread over the four positions, so a position bias cannot score well
        for pos in 0..4 {
            let n = qs.iter().filter(|q| q.answer == pos).count();
            assert!(n >= qs.len() / 8, "answer {pos} is right {n} times");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(
            qs.iter().all(|q| seen.insert(q.question.clone())),
            "duplicate questions"
        );
    }

    #[test]
    fn bad_records_name_the_line() {
        let e = parse_questions(
            "{\"question\": \"a?\", \"choices\": [\"x\", \"y\"], \"answer\": 2}\n",
            "f.jsonl",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("f.jsonl:1"), "{e:#}");
        let e = parse_questions("{\"question\": \"a?\", \"choice\": []}\n", "f.jsonl").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }

    #[test]
    fn loglik_of_a_certain_continuation_is_zero() {
        // vocab 3; two rows predicting ids 1 and 2
        let logits = [0.0, 100.0, 0.0, 0.0, 0.0, 100.0];
        assert!(continuation_loglik(&logits, &[1, 2]).abs() < 1e-9);
        // uniform rows: ln(1/3) per predicted token
        let l = continuation_loglik(&[0.0; 6], &[1, 2]);
        assert!((l - 2.0 * (1.0f64 / 3.0).ln()).abs() < 1e-12);
    }
}

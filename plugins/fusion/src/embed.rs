//! Embedding + layer norm fusion of ONNX Runtime's transformers optimizer (onnxruntime/python/tools/transformers
//! fusion_embedlayer.py) into com.microsoft `EmbedLayerNormalization`, for BERT's embeddings with default positions:
//! ```text
//! LayerNormalization(Add(Add(Gather(word, ids), Gather(segment, seg_ids)), Gather(position, pos)))
//!   pos = Slice(arange buffer [1, L], [0], Unsqueeze(Gather(Shape(ids), 1)), [1]) = 0..S-1
//! => EmbedLayerNormalization(Cast(ids, int32), Cast(seg_ids, int32), word, position, segment, gamma, beta)
//! ```
//! The positions are checked to be exactly 0..S-1 (an arange buffer sliced from 0 to the ids' length), so the
//! op's default position ids give the same rows. No mask goes in: Attention gets the raw mask itself.

use olive_onnx::graph::{attr_float, attr_int, node};

use crate::graph::{attr_i, find_attr, Rewriter, MS_DOMAIN};

/// Whether `value` is `Unsqueeze(Gather(Shape(ids), 1), [0])`: the length of `ids`' second dimension, as [1].
fn is_length_of(r: &Rewriter, value: &str, ids: &str) -> bool {
    let check = || -> Option<bool> {
        let u = r.producer(value).filter(|&u| r.is(u, "Unsqueeze"))?;
        let axes = match r.node(u).input.get(1) {
            Some(a) => r.constant(a)?.as_i64()?,
            None => crate::graph::attr_ints(r.node(u), "axes")?,
        };
        let g = r.parent(u, 0, "Gather")?;
        let idx = r.constant(r.node(g).input.get(1)?)?.as_i64()?;
        let shape = r.parent(g, 0, "Shape")?;
        let plain = find_attr(r.node(shape), "start").is_none()
            && find_attr(r.node(shape), "end").is_none();
        Some(axes == [0] && idx == [1] && plain && r.node(shape).input.first()? == ids)
    };
    check().unwrap_or(false)
}

/// Whether `pos` is 0..S-1 for the ids `ids` ([B, S]).
fn default_positions(r: &Rewriter, pos: &str, ids: &str) -> bool {
    let check = || -> Option<bool> {
        let s = r.producer(pos).filter(|&s| r.is(s, "Slice"))?;
        let n = r.node(s);
        let buffer = r.constant(n.input.first()?)?;
        let values = buffer.as_i64()?;
        let arange = buffer.dims.len() == 2
            && buffer.dims[0] == 1
            && values.iter().enumerate().all(|(i, &v)| v == i as i64);
        let c = |k: usize| {
            n.input
                .get(k)
                .and_then(|x| r.constant(x))
                .and_then(|v| v.as_i64())
        };
        let steps_ok = n.input.get(4).is_none_or(|_| c(4).as_deref() == Some(&[1]));
        Some(
            arange
                && c(1).as_deref() == Some(&[0])
                && c(3).as_deref() == Some(&[1])
                && steps_ok
                && is_length_of(r, n.input.get(2)?, ids),
        )
    };
    check().unwrap_or(false)
}

/// A Gather on axis 0 of a constant 2-D table: (table, indices).
fn table_gather(r: &Rewriter, i: usize) -> Option<(String, String)> {
    if !r.is(i, "Gather") || attr_i(r.node(i), "axis").unwrap_or(0) != 0 {
        return None;
    }
    let n = r.node(i);
    let table = n.input.first()?;
    (r.constant(table)?.dims.len() == 2)
        .then(|| (table.clone(), n.input.get(1).cloned().unwrap_or_default()))
}

/// Fuses BERT embeddings + LayerNormalization; `inputs` are the graph inputs. Returns how many.
pub fn fuse_embed_layer_norm(r: &mut Rewriter, inputs: &[String]) -> usize {
    let mut count = 0;
    for ln in 0..r.node_count() {
        if !r.is(ln, "LayerNormalization")
            || r.node(ln).input.len() != 3
            || r.node(ln).output.len() != 1
        {
            continue;
        }
        let Some(add2) = r.parent(ln, 0, "Add") else {
            continue;
        };
        let found = (0..2).find_map(|k| {
            let pg = r.parent(add2, k, "Gather")?;
            let (pos_table, pos) = table_gather(r, pg)?;
            let add1 = r.parent(add2, 1 - k, "Add")?;
            let g0 = r.parent(add1, 0, "Gather")?;
            let g1 = r.parent(add1, 1, "Gather")?;
            let (t0, i0) = table_gather(r, g0)?;
            let (t1, i1) = table_gather(r, g1)?;
            // The word Gather reads the ids the positions are measured on.
            let (word, ids, seg, seg_ids) = if default_positions(r, &pos, &i0) {
                (t0, i0, t1, i1)
            } else if default_positions(r, &pos, &i1) {
                (t1, i1, t0, i0)
            } else {
                return None;
            };
            if !inputs.contains(&ids) || !inputs.contains(&seg_ids) {
                return None;
            }
            Some((
                vec![g0, g1, add1, pg, add2, ln],
                word,
                ids,
                seg,
                seg_ids,
                pos_table,
            ))
        });
        let Some((nodes, word, ids, seg, seg_ids, pos_table)) = found else {
            continue;
        };
        let out = r.node(ln).output[0].clone();
        if !r.removable(&nodes, &[&out]) {
            continue;
        }
        let ln_node = r.node(ln);
        let epsilon = find_attr(ln_node, "epsilon")
            .and_then(|a| a.f)
            .unwrap_or(1e-5);
        let (gamma, beta) = (ln_node.input[1].clone(), ln_node.input[2].clone());
        let cast = |r: &mut Rewriter, x: &str| {
            let y = r.fresh(&format!("{x}_int32"));
            let name = r.fresh(&format!("{x}_Cast"));
            r.replace(
                &[],
                node("", "Cast", &name, &[x], &[&y], vec![attr_int("to", 6)]),
            );
            y
        };
        let ids32 = cast(r, &ids);
        let seg32 = cast(r, &seg_ids);
        let name = r.fresh("EmbedLayerNormalization");
        let dummy = r.fresh(&format!("{name}_dummy_mask_index"));
        let fused = node(
            MS_DOMAIN,
            "EmbedLayerNormalization",
            &name,
            &[&ids32, &seg32, &word, &pos_table, &seg, &gamma, &beta],
            &[&out, &dummy],
            vec![attr_float("epsilon", epsilon)],
        );
        r.replace(&nodes, fused);
        count += 1;
    }
    count
}

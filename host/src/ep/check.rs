//! Running a model through one execution provider and proving it ran there (issue 9): the session appends the
//! provider with its options (a failure to create it is an error naming the provider, never a silent CPU
//! fallback), sets `session.disable_cpu_ep_fallback=1` (ONNX Runtime then refuses a graph with nodes the provider
//! does not take; the check reopens it with fallback on and profiling to name those nodes), runs once with
//! ONNX Runtime's profiler and reads the provider of every node event in its JSON trace, then compares each
//! output with the CPU provider's on the same library, element-wise within `atol + rtol * |cpu|`. The CPU reference
//! session sets `session.qdq_matmulnbits_accuracy_level=0`: ONNX Runtime's DQ + MatMul -> MatMulNBits fusion otherwise
//! computes with int8-quantized activations (its default level 4), so a uint16 QDQ model's reference was not its QDQ
//! math (one SmolLM2 MLP MatMul: CPU 100 output steps off the exact result, the HTP 20; the int4-checkpoint
//! SmolLM2's logits on the check's ids: HTP-vs-CPU ratio to the tolerance 3.24 -> 1.82, fp32 SmolLM2's 0.67 -> 0.65).
//!
//! The CPU run may be of a reference model instead (`--reference_model`): an EPContext model (QNN's context binary,
//! ONNX Runtime's `ep.context_enable=1`) runs only on its provider, so it is compared with the CPU outputs of the
//! model it was compiled from, fed the same inputs (the two must have the same input names). Its EPContext node
//! counts as on the provider when the profile shows the provider ran it, as for any node.
//!
//! A provider in a plugin-EP library (`runtime.ep_library`, e.g. onnxruntime-qnn's
//! `libonnxruntime_providers_qnn.so`) is registered into the environment once (`RegisterExecutionProviderLibrary`)
//! and appended through the devices it reports (`SessionOptionsAppendExecutionProvider_V2`, options prefixed with
//! the provider's name as ONNX Runtime's device API wants them).
//!
//! Inputs are made from the graph (those with a default value keep it): symbolic dims named `*past*` are 0, `batch*`
//! 1, any other 4 (so a decoder runs a 4-token prompt on an empty KV cache); `attention_mask` is ones, `*token_type*`
//! zeros, floats a fixed ramp in [-1, 1], integer ids `i % 97`. A fixed-shape decoder (static KV: `attention_mask`
//! longer than `input_ids` by P past slots) gets its empty cache the same way: the mask's first P slots 0 and the
//! `past_key_values*` inputs zero (a ramp there would be a cache no decode reaches).
//!
//! What ships beside the model (or its reference) replaces those with its real inputs (feeds.rs):
//! - a language model's `input_ids` are its `tokenizer.json`'s encoding of a fixed English passage (when the
//!   `logits` output's vocabulary holds those ids). Synthetic ids run a statically quantized LLM outside everything
//!   its calibration saw: SmolLM2's ids 0-16 are control tokens, and at those positions its massive activations
//!   exceed the calibrated ranges (layer 2's down_proj: 705 against 496), so the QDQ model is off its own fp32 model
//!   on the CPU as on the HTP (logits cosine 0.69 / 0.68; 0.996 at the other positions) and the two runs' difference
//!   there measures saturation, not the provider;
//! - inputs named as a parameter of an `*.onnx_adapter` there (the LoRA inputs OpenVINO's recipe makes required) get
//!   that parameter. A ramp there is an adapter ~100x the size of a trained one: on the passage, the lab's AWQ + LoRA
//!   model on OpenVINO CPU drifted to 1.06e-3 with a ramp adapter, past its 1e-3 tolerance (9.7e-5 with its own).
//!
//! Call [`check`] only in a process whose ONNX Runtime library is the provider's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};
use half::f16;
use olive_pass_api::ExecutionProvider;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType};
use serde::Serialize;

use super::feeds::Shipped;

/// The CPU provider's name.
const CPU: &str = "CPUExecutionProvider";

/// The op of a precompiled partition (ONNX Runtime's contrib `com.microsoft.EPContext`), which only its provider
/// runs.
pub const EP_CONTEXT: &str = "EPContext";

/// ONNX Runtime's message when fallback is disabled and a node would land on the CPU provider.
const FALLBACK_REFUSED: &str = "fallback to CPU EP has been explicitly disabled";

/// What the check found; `outputs` are the provider's float outputs (flattened, by name).
#[derive(Debug, Serialize)]
pub struct Report {
    /// The provider checked.
    pub provider: String,
    /// The ONNX Runtime version that ran it.
    pub onnxruntime: String,
    /// The model whose CPU outputs were the reference, when not the checked model itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<PathBuf>,
    /// Node events in the profile (fused partitions count once), all run by `provider`.
    pub nodes: usize,
    /// Per float output: the largest |provider - cpu| (absent when the provider is the CPU one).
    pub max_abs_diff: BTreeMap<String, f64>,
    /// What `input_ids` held (module docs), when the model takes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_ids: Option<&'static str>,
    /// The provider's float outputs, flattened, by name (not printed).
    #[serde(skip)]
    pub outputs: Outputs,
}

/// A node that ran on another provider than the one asked for.
#[derive(Debug, Clone, PartialEq)]
struct ForeignNode {
    name: String,
    op: String,
    provider: String,
}

/// The provider as the `ort` crate appends it, failing rather than falling back.
fn dispatch(ep: &ExecutionProvider) -> anyhow::Result<ExecutionProviderDispatch> {
    macro_rules! configured {
        ($provider:expr) => {
            ep.provider_options
                .iter()
                .fold($provider, |p, (k, v)| p.with_arbitrary_config(k, v))
                .build()
        };
    }
    let dispatch = match ep.provider.as_str() {
        CPU if ep.provider_options.is_empty() => ep::CPU::default().build(),
        CPU => bail!(
            "CPUExecutionProvider takes no provider options here; the plugin gives {:?}",
            ep.provider_options
        ),
        "OpenVINOExecutionProvider" => configured!(ep::OpenVINO::default()),
        "CUDAExecutionProvider" => configured!(ep::CUDA::default()),
        "QNNExecutionProvider" => configured!(ep::QNN::default()),
        other => bail!(
            "olive-host cannot append execution provider {other}: it knows CPUExecutionProvider, \
             OpenVINOExecutionProvider, CUDAExecutionProvider and QNNExecutionProvider"
        ),
    };
    Ok(dispatch.error_on_failure())
}

/// The plugin-EP libraries registered into this process's environment (a second registration is an error).
static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers `library` (once) and returns the environment's devices served by `ep.provider`.
fn plugin_devices(
    environment: &'static ort::environment::Environment,
    ep: &ExecutionProvider,
    library: &Path,
) -> anyhow::Result<Vec<ort::device::Device<'static>>> {
    let mut registered = REGISTERED
        .lock()
        .map_err(|_| anyhow!("the plugin-EP registry lock is poisoned"))?;
    if !registered.iter().any(|p| p == library) {
        environment
            .register_ep_library(&ep.provider, library)
            .map_err(|e| {
                anyhow!(
                    "execution provider {}: the plugin-EP library {} cannot be registered with ONNX Runtime {}: {e}",
                    ep.provider,
                    library.display(),
                    version()
                )
            })?;
        registered.push(library.to_path_buf());
    }
    let devices: Vec<_> = environment
        .devices()
        .filter(|d| d.ep().is_ok_and(|name| name == ep.provider))
        .collect();
    if devices.is_empty() {
        bail!(
            "execution provider {} cannot be created with ONNX Runtime {}: the plugin-EP library {} reports no \
             device for it",
            ep.provider,
            version(),
            library.display()
        );
    }
    Ok(devices)
}

/// Opens `model` on `ep` with fallback disabled (or enabled, to find the nodes it would refuse) and profiling
/// into `profile_prefix`.
fn open(
    model: &Path,
    ep: &ExecutionProvider,
    fallback: bool,
    profile_prefix: &Path,
) -> anyhow::Result<Session> {
    let environment = olive_runtime::env::environment()?;
    let options_error = |what: &str, e: ort::Error| anyhow!("{what}: {e}");
    let mut builder = Session::builder(environment)
        .map_err(|e| options_error("creating the session options", e))?
        .with_profiling(profile_prefix)
        .map_err(|e| options_error("enabling profiling", e.into()))?;
    // For the CPU provider itself "fallback" has no meaning (ONNX Runtime would refuse every node): its check is
    // the profile's providers alone.
    if !fallback && ep.provider != CPU {
        builder = builder
            .with_config_entry("session.disable_cpu_ep_fallback", "1")
            .map_err(|e| options_error("session.disable_cpu_ep_fallback", e.into()))?;
    }
    let appended = match super::ep_library(ep)? {
        Some(library) => {
            let devices = plugin_devices(environment, ep, &library)?;
            let options: Vec<(String, String)> = ep
                .provider_options
                .iter()
                .map(|(k, v)| (format!("{}.{k}", ep.provider), v.clone()))
                .collect();
            builder.with_devices(devices, Some(&options))
        }
        None => builder.with_execution_providers([dispatch(ep)?]),
    };
    let mut builder = appended
        .map_err(|e| {
            anyhow!(
                "execution provider {} (device {}, options {:?}) cannot be created with ONNX Runtime {} ({}): {e}",
                ep.provider,
                ep.device,
                ep.provider_options,
                version(),
                ep.runtime.package
            )
        })?;
    builder.commit_from_file(model).map_err(|e| anyhow!("{e}"))
}

fn version() -> String {
    std::env::var_os(olive_runtime::env::DYLIB_ENV)
        .and_then(|p| super::library_version(Path::new(&p)).ok())
        .unwrap_or_else(|| "?".into())
}

/// Runs `model` through `ep` and checks where every node ran and how close the outputs are to the CPU's (of
/// `reference_model`'s when given, else of `model`'s).
pub fn check(
    model: &Path,
    reference_model: Option<&Path>,
    ep: &ExecutionProvider,
) -> anyhow::Result<Report> {
    for file in std::iter::once(model).chain(reference_model) {
        if !file.is_file() {
            bail!("{} is not an ONNX model file", file.display());
        }
    }
    let mut shipped = Shipped::beside(model)?;
    if let Some(reference_model) = reference_model {
        shipped = shipped.or(Shipped::beside(reference_model)?);
    }
    let scratch = tempfile::tempdir().context("cannot create a folder for the profile")?;
    let prefix = scratch.path().join("ep");
    // The CPU reference runs first, before a plugin-EP library is registered: afterwards the `ort` crate's default
    // device policy (most efficient) would pick the plugin EP for a plain session when its device is the CPU (as
    // QNN's HTP simulator reports).
    let reference = match (ep.provider.as_str(), reference_model) {
        (CPU, None) => None,
        (_, reference_model) => Some(cpu_reference(reference_model.unwrap_or(model), &shipped)?),
    };
    let mut session = match open(model, ep, false, &prefix) {
        Ok(session) => session,
        Err(err) if err.to_string().contains(FALLBACK_REFUSED) => {
            let refused = refused_nodes(model, ep, &scratch.path().join("fallback"), &shipped)?;
            bail!(
                "execution provider {} cannot take {} node(s) of {} (CPU fallback is disabled): {}",
                ep.provider,
                refused.len(),
                model.display(),
                describe(&refused)
            );
        }
        Err(err) if err.to_string().contains("cannot be created") => return Err(err),
        Err(err) => bail!(
            "execution provider {} cannot open {}: {err}",
            ep.provider,
            model.display()
        ),
    };
    let feeds = match &reference {
        Some((feeds, _)) => feeds,
        None => &shipped.inputs(&session)?,
    };
    if let Some(reference_model) = reference_model {
        let ours: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let unknown: Vec<&str> = feeds
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !ours.contains(n))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "the reference model {} takes inputs {unknown:?} that {} does not (it takes {ours:?}): the reference \
                 must be the model it was made from",
                reference_model.display(),
                model.display()
            );
        }
    }
    let input_ids = shipped.input_ids(&session);
    let outputs = run(&mut session, feeds, &ep.provider)?;
    let events = profile_nodes(&mut session)?;
    let foreign: Vec<ForeignNode> = events
        .iter()
        .filter(|n| n.provider != ep.provider)
        .cloned()
        .collect();
    if !foreign.is_empty() {
        bail!(
            "execution provider {}: {} node(s) of {} ran on another provider: {}",
            ep.provider,
            foreign.len(),
            model.display(),
            describe(&foreign)
        );
    }
    if events.is_empty() {
        bail!(
            "execution provider {}: the profile of {} shows no node run",
            ep.provider,
            model.display()
        );
    }
    let mut max_abs_diff = BTreeMap::new();
    if let Some((_, cpu)) = &reference {
        for (name, ours) in &outputs {
            let reference = cpu.get(name).ok_or_else(|| {
                anyhow!(
                    "the CPU reference {} has no output {name}",
                    reference_model.unwrap_or(model).display()
                )
            })?;
            max_abs_diff.insert(name.clone(), compare(name, ours, reference, ep)?);
        }
    }
    Ok(Report {
        provider: ep.provider.clone(),
        onnxruntime: version(),
        reference_model: reference_model.map(Path::to_path_buf),
        nodes: events.len(),
        max_abs_diff,
        input_ids,
        outputs,
    })
}

/// The nodes ONNX Runtime puts on the CPU provider when fallback is allowed.
fn refused_nodes(
    model: &Path,
    ep: &ExecutionProvider,
    prefix: &Path,
    shipped: &Shipped,
) -> anyhow::Result<Vec<ForeignNode>> {
    let mut session = open(model, ep, true, prefix)?;
    let feeds = shipped.inputs(&session)?;
    run(&mut session, &feeds, &ep.provider)?;
    let refused: Vec<ForeignNode> = profile_nodes(&mut session)?
        .into_iter()
        .filter(|n| n.provider != ep.provider)
        .collect();
    if refused.is_empty() {
        bail!(
            "execution provider {}: ONNX Runtime refused {} with CPU fallback disabled, yet the profile with \
             fallback shows no node on another provider",
            ep.provider,
            model.display()
        );
    }
    Ok(refused)
}

fn describe(nodes: &[ForeignNode]) -> String {
    const SHOWN: usize = 12;
    let mut text: Vec<String> = nodes
        .iter()
        .take(SHOWN)
        .map(|n| format!("{} ({}, on {})", n.name, n.op, n.provider))
        .collect();
    if nodes.len() > SHOWN {
        text.push(format!("and {} more", nodes.len() - SHOWN));
        // Every op type, so that none hides among the ones left out.
        let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
        for n in nodes {
            *ops.entry(n.op.as_str()).or_default() += 1;
        }
        let ops: Vec<String> = ops.iter().map(|(op, k)| format!("{op} x{k}")).collect();
        return format!("{} (by op: {})", text.join(", "), ops.join(", "));
    }
    text.join(", ")
}

/// The float outputs of one run, by name, as f64.
pub type Outputs = BTreeMap<String, Vec<f64>>;

fn run(
    session: &mut Session,
    feeds: &[(String, DynValue)],
    provider: &str,
) -> anyhow::Result<Outputs> {
    let feeds: Vec<(&str, SessionInputValue<'_>)> = feeds
        .iter()
        .map(|(n, v)| (n.as_str(), SessionInputValue::from(v)))
        .collect();
    let outputs = session
        .run(feeds)
        .map_err(|e| anyhow!("execution provider {provider}: the run failed: {e}"))?;
    let mut floats = Outputs::new();
    for (name, value) in outputs.iter() {
        let data: Vec<f64> = match value.dtype().tensor_type() {
            Some(TensorElementType::Float32) => {
                let (_, data) = value.try_extract_tensor::<f32>()?;
                data.iter().map(|&v| f64::from(v)).collect()
            }
            Some(TensorElementType::Float16) => {
                let (_, data) = value.try_extract_tensor::<f16>()?;
                data.iter().map(|v| f64::from(v.to_f32())).collect()
            }
            _ => continue,
        };
        floats.insert(name.to_string(), data);
    }
    Ok(floats)
}

/// The run on the CPU provider of the same library (the reference), and the inputs it was fed.
fn cpu_reference(
    model: &Path,
    shipped: &Shipped,
) -> anyhow::Result<(Vec<(String, DynValue)>, Outputs)> {
    let environment = olive_runtime::env::environment()?;
    // The reference computes the QDQ graph as written: ONNX Runtime fuses DequantizeLinear(8-bit weight) + MatMul
    // into MatMulNBits with accuracy level 4 by default (activations quantized to int8), which put a uint16-activation
    // model's logits farther from its exact QDQ math than the QNN HTP is (module docs).
    let mut session = Session::builder(environment)
        .and_then(|b| {
            b.with_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
                .map_err(Into::into)
        })
        .and_then(|mut b| b.commit_from_file(model))
        .map_err(|e| {
            let hint = if e.to_string().contains(EP_CONTEXT) {
                " (an EPContext model runs on its provider only: give --reference_model, the model it was compiled \
                 from)"
            } else {
                ""
            };
            anyhow!("the CPU reference cannot open {}: {e}{hint}", model.display())
        })?;
    let feeds = shipped.inputs(&session)?;
    let outputs = run(&mut session, &feeds, CPU)?;
    Ok((feeds, outputs))
}

/// The largest |ours - reference|; an error names the output and the first element out of tolerance.
fn compare(
    name: &str,
    ours: &[f64],
    reference: &[f64],
    ep: &ExecutionProvider,
) -> anyhow::Result<f64> {
    if ours.len() != reference.len() {
        bail!(
            "execution provider {}: output {name} has {} elements, the CPU provider's {}",
            ep.provider,
            ours.len(),
            reference.len()
        );
    }
    let tolerance = ep.tolerance;
    let mut worst = 0.0f64;
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let diff = (a - b).abs();
        if diff.is_nan() || diff > tolerance.atol + tolerance.rtol * b.abs() {
            bail!(
                "execution provider {}: output {name}[{i}] is {a}, the CPU provider's {b} (|diff| {diff:.3e} over \
                 atol {:e} + rtol {:e} * |cpu|)",
                ep.provider,
                tolerance.atol,
                tolerance.rtol
            );
        }
        worst = worst.max(diff);
    }
    Ok(worst)
}

/// The node events of the session's profile (ONNX Runtime's Chrome-trace JSON: `cat` "Node", `args.provider`,
/// `args.op_name`, names ending in `_kernel_time`), one per node.
fn profile_nodes(session: &mut Session) -> anyhow::Result<Vec<ForeignNode>> {
    let file = session
        .end_profiling()
        .map_err(|e| anyhow!("cannot end profiling: {e}"))?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the profile {file}"))?;
    parse_profile(&text).with_context(|| format!("profile {file}"))
}

fn parse_profile(text: &str) -> anyhow::Result<Vec<ForeignNode>> {
    let events: Vec<serde_json::Value> =
        serde_json::from_str(text).context("not a JSON array of trace events")?;
    let mut nodes: Vec<ForeignNode> = Vec::new();
    for event in &events {
        if event["cat"] != "Node" {
            continue;
        }
        let Some(name) = event["name"]
            .as_str()
            .and_then(|n| n.strip_suffix("_kernel_time"))
        else {
            continue;
        };
        let args = &event["args"];
        let node = ForeignNode {
            name: name.to_owned(),
            op: args["op_name"].as_str().unwrap_or("?").to_owned(),
            provider: args["provider"].as_str().unwrap_or("?").to_owned(),
        };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_provider_of_each_kernel_event() {
        let trace = r#"[
            {"cat": "Session", "name": "model_run", "args": {}},
            {"cat": "Node", "name": "a_fence_before", "args": {"op_name": "MatMul"}},
            {"cat": "Node", "name": "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0_kernel_time",
             "args": {"op_name": "OpenVINO-EP-subgraph_1", "provider": "OpenVINOExecutionProvider"}},
            {"cat": "Node", "name": "/model/layers.0/attn/GroupQueryAttention_kernel_time",
             "args": {"op_name": "GroupQueryAttention", "provider": "CPUExecutionProvider"}},
            {"cat": "Node", "name": "/model/layers.0/attn/GroupQueryAttention_kernel_time",
             "args": {"op_name": "GroupQueryAttention", "provider": "CPUExecutionProvider"}}
        ]"#;
        let nodes = parse_profile(trace).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].op, "GroupQueryAttention");
        assert_eq!(
            describe(&nodes[1..]),
            "/model/layers.0/attn/GroupQueryAttention (GroupQueryAttention, on CPUExecutionProvider)"
        );
        assert!(parse_profile("{}").is_err());
    }
}

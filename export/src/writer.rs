//! The export driver: open the checkpoint, build each graph into a temporary directory beside
//! the output, write the manifest and tokenizer files, then rename the directory into place.
//! An interrupted export leaves only `OUT.partial-*`, never a directory that loads.

use crate::error::{Error, Result};
use crate::external::ExternalData;
use crate::graph::Graph;
use crate::layers::Builder;
use crate::onnx::{ModelProto, ValueInfoProto, tensor_proto::DataType, tensor_shape_proto::dimension, type_proto};
use crate::precision::{Precision, Target};
use prost::Message;
use st_checkpoint::manifest::{FORMAT_VERSION, GraphSpec, IoSpec, MANIFEST_FILE, Manifest, SourceInfo};
use st_checkpoint::{Checkpoint, ModelConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Precision of the text decoder's linear layers (vision stays fp32, lm_head fp32 for now).
    pub precision: Precision,
    pub linear: crate::layers::LinearOptions,
    /// Embedding table: fp32 or fp16 (gathered in f16, widened after the lookup).
    pub embed: Precision,
    /// Vision tower and merger: fp32 or fp16 weights (docs/FORMATS.md#precisions: never quantized below fp16).
    pub vision: Precision,
    /// Execution provider the graphs are meant for (recorded in the manifest).
    pub target: Target,
    /// Attention in the decoder: GroupQueryAttention (default: the KV cache can be appended in
    /// place) or standard ops (any provider, e.g. TensorRT).
    pub attention: crate::precision::Attention,
    /// Per-linear precision overrides: (glob over HF module names, precision); first match wins.
    pub overrides: Vec<(String, Precision)>,
    /// Show a progress bar (bytes of source tensors processed) on stderr.
    pub progress: bool,
    /// A PEFT LoRA adapter directory merged into the weights before quantization.
    pub lora: Option<std::path::PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self::new(Precision::Fp32)
    }
}

impl ExportOptions {
    /// Defaults for a text precision. fp32 / fp16 exports keep every part at that precision.
    /// Under int4 and fp8 (docs/FORMATS.md#precisions): lm_head int8, embedding table and vision tower fp16.
    pub fn new(precision: Precision) -> Self {
        let mut linear = crate::layers::LinearOptions::default();
        let (lm_head, embed, vision) = match precision {
            Precision::Fp32 | Precision::Fp16 => (precision, precision, precision),
            Precision::Int4 | Precision::Int8 | Precision::Fp8 => (Precision::Int8, Precision::Fp16, Precision::Fp16),
        };
        linear.lm_head = lm_head;
        Self {
            precision,
            linear,
            embed,
            vision,
            target: Target::Cpu,
            attention: crate::precision::Attention::StGroupQuery,
            overrides: vec![],
            progress: false,
            lora: None,
        }
    }

    fn check(&self) -> Result<()> {
        for (name, p) in [("embed", self.embed), ("vision", self.vision)] {
            if !matches!(p, Precision::Fp32 | Precision::Fp16) {
                return Err(Error::InvalidOption { name, reason: format!("{p} (fp32 or fp16)") });
            }
        }
        Ok(())
    }

    /// The overrides compiled once for the builders.
    fn compiled_overrides(&self) -> Result<Vec<(globset::GlobMatcher, Precision)>> {
        self.overrides
            .iter()
            .map(|(p, prec)| {
                globset::Glob::new(p)
                    .map(|g| (g.compile_matcher(), *prec))
                    .map_err(|e| Error::InvalidOption { name: "override pattern", reason: format!("{p:?}: {e}") })
            })
            .collect()
    }
}

/// Tokenizer and template files carried over when present.
const CARRIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
    "config.json",
];

type BuildFn = fn(&mut Builder<'_>, &ModelConfig) -> Result<()>;

/// Export the checkpoint in `src` to a new model directory `out`.
pub fn export(src: &Path, out: &Path, opts: &ExportOptions) -> Result<Manifest> {
    if out.exists() {
        return Err(Error::OutputExists { path: out.to_path_buf() });
    }
    opts.check()?;
    let ckpt = Checkpoint::open(src)?;
    // The adapter is checked against the checkpoint before anything is written.
    let lora = match &opts.lora {
        Some(dir) => {
            let adapter = st_checkpoint::LoraAdapter::open(dir)?;
            adapter.validate(&ckpt.config)?;
            Some(adapter)
        }
        None => None,
    };
    remove_stale_partials(out);
    let tmp = partial_dir(out);
    std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
    let result = write_all(&ckpt, &tmp, opts, lora.as_ref());
    match result {
        Ok(manifest) => match std::fs::rename(&tmp, out) {
            Ok(()) => Ok(manifest),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another export of the same output finished first (rename never replaces a
                // non-empty directory): what is there is a whole export, not ours.
                if out.is_dir() {
                    return Err(Error::OutputExists { path: out.to_path_buf() });
                }
                Err(Error::io(out)(e))
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Remove the `.OUT.partial-PID-N` directories of exports whose process is gone (killed, or the
/// machine lost power): they are never taken for a model, but they hold disk.
fn remove_stale_partials(out: &Path) {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else { return };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    st_checkpoint::temp::remove_dead_temporaries(parent, |n| n.strip_prefix(&prefix)?.split('-').next()?.parse().ok());
}

/// `.OUT.partial-PID-N`: unique per process and per export within it, so two threads exporting the
/// same checkpoint at once (two engines opened together) never write into one directory.
fn partial_dir(out: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    out.with_file_name(format!(".{name}.partial-{}-{n}", std::process::id()))
}

fn write_all(
    ckpt: &Checkpoint,
    dir: &Path,
    opts: &ExportOptions,
    lora: Option<&st_checkpoint::LoraAdapter>,
) -> Result<Manifest> {
    // The vision tower is never quantized below fp16 (docs/FORMATS.md#precisions: quantized ViTs move boxes).
    let graphs: [(&str, BuildFn, Precision); 3] = [
        ("vision", crate::vision::build_vision, opts.vision),
        ("embed", crate::text::build_embed, opts.embed),
        ("decoder", crate::text::build_decoder, opts.precision),
    ];
    let mut specs = BTreeMap::new();
    let specs_all = st_checkpoint::layout::expected_tensors(&ckpt.config);
    let total: u64 =
        specs_all.iter().filter_map(|s| ckpt.weights.get(&s.name).ok().map(|t| t.bytes.len() as u64)).sum();
    let bar = if opts.progress { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} [{bar:40}] {msg} tensors, {bytes}/{total_bytes} {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // A tied lm_head reads the embedding table a second time.
    let reads = specs_all.len() + usize::from(ckpt.config.tie_word_embeddings);
    let progress = crate::layers::Progress::new(bar, reads);
    let overrides = opts.compiled_overrides()?;
    let attention = match (opts.attention, opts.target) {
        // st's node has a CPU and a CUDA kernel; TensorRT gets ORT's.
        (crate::precision::Attention::StGroupQuery, Target::TensorRt) => crate::precision::Attention::GroupQuery,
        (a, _) => a,
    };
    for (name, build, precision) in graphs {
        progress.bar.set_prefix(name);
        let data_file = format!("{name}.onnx.data");
        let external = ExternalData::create(dir, &data_file)?;
        let mut b = Builder {
            g: Graph::new(name, external),
            weights: &ckpt.weights,
            precision,
            linear: crate::layers::LinearOptions {
                fused_ops: opts.target == Target::Cuda,
                int4_op: if opts.target == Target::TensorRt {
                    crate::layers::Int4Op::NBits
                } else {
                    opts.linear.int4_op
                },
                ..opts.linear
            },
            progress: &progress,
            overrides: &overrides,
            attention,
            contrib_fusions: opts.target == Target::Cpu,
            lora,
        };
        build(&mut b, &ckpt.config)?;
        let (model, external) = b.g.finish("st export");
        external.finish()?;
        let file = format!("{name}.onnx");
        let path = dir.join(&file);
        std::fs::write(&path, model.encode_to_vec()).map_err(Error::io(&path))?;
        let mut precision = BTreeMap::from([
            ("linear".to_string(), precision.to_string()),
            ("target".to_string(), opts.target.to_string()),
        ]);
        for (pattern, p) in &opts.overrides {
            precision.insert(format!("override {pattern}"), p.to_string());
        }
        if name == "decoder"
            && let Some(a) = lora
        {
            let merged = format!("{} (r {}, {} linears, merged)", a.dir.display(), a.config.r, a.modules.len());
            precision.insert("lora".into(), merged);
        }
        if name == "decoder" {
            let head = match opts.linear.lm_head {
                Precision::Int8
                    if opts.target == Target::Cpu
                        && opts.linear.int4_op == crate::layers::Int4Op::St
                        && opts.linear.accuracy_level == 4 =>
                {
                    format!("int8 block {}, ai.st.MatMulInt8, f16 scales", opts.linear.int8.block)
                }
                Precision::Int8 => format!("int8 block {}", opts.linear.int8.block),
                other => other.to_string(),
            };
            precision.insert("lm_head".into(), head);
            // The runtime keeps the KV cache on the GPU where this node runs there (st's has a CUDA kernel).
            precision.insert("attention".into(), attention.node().into());
            if opts.precision == Precision::Int4 {
                let s = opts.linear.int4;
                let op = match (opts.target, opts.linear.int4_op) {
                    (Target::Cuda, _) => "ai.st.MatMulInt4, f32 scales",
                    (Target::Cpu, crate::layers::Int4Op::St) => "ai.st.MatMulInt4, f16 scales",
                    _ => "MatMulNBits, f32 scales",
                };
                let scheme = format!(
                    "block {} {}, accuracy_level {}, {op}",
                    s.block,
                    if s.symmetric { "symmetric" } else { "asymmetric" },
                    opts.linear.accuracy_level
                );
                precision.insert("int4".into(), scheme);
            }
        }
        specs.insert(name.to_string(), graph_spec(&model, file, Some(data_file), precision));
    }
    progress.bar.finish_and_clear();
    let mut files = Vec::new();
    for f in CARRIED_FILES {
        let from = ckpt.dir.join(f);
        if from.is_file() {
            let to = dir.join(f);
            std::fs::copy(&from, &to).map_err(Error::io(&to))?;
            files.push(f.to_string());
        }
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        producer: format!("st export {}", env!("CARGO_PKG_VERSION")),
        source: SourceInfo { dir: ckpt.dir.display().to_string(), fingerprint: ckpt.fingerprint()? },
        config: ckpt.config.clone(),
        generation: ckpt.generation.clone(),
        image_processor: ckpt.image_processor.clone(),
        graphs: specs,
        files,
        special_tokens: st_checkpoint::manifest::special_tokens(&ckpt.dir.join("tokenizer.json"))?,
    };
    let path = dir.join(MANIFEST_FILE);
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| Error::Io { path: path.clone(), source: e.into() })?;
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    Ok(manifest)
}

fn io_spec(v: &ValueInfoProto) -> IoSpec {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = t
                .elem_type
                .and_then(|e| DataType::try_from(e).ok())
                .map(|d| d.as_str_name().to_lowercase())
                .unwrap_or_default();
            let shape = t
                .shape
                .iter()
                .flat_map(|s| &s.dim)
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(n)) => serde_json::json!(n),
                    Some(dimension::Value::DimParam(p)) => serde_json::json!(p),
                    None => serde_json::Value::Null,
                })
                .collect();
            (dtype, shape)
        }
        _ => (String::new(), vec![]),
    };
    IoSpec { name: v.name.clone().unwrap_or_default(), dtype, shape }
}

fn graph_spec(
    model: &ModelProto,
    file: String,
    data_file: Option<String>,
    precision: BTreeMap<String, String>,
) -> GraphSpec {
    let g = model.graph.as_ref();
    GraphSpec {
        file,
        data_file,
        precision,
        inputs: g.map(|g| g.input.iter().map(io_spec).collect()).unwrap_or_default(),
        outputs: g.map(|g| g.output.iter().map(io_spec).collect()).unwrap_or_default(),
    }
}

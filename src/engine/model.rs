//! An exported model directory opened for inference: its manifest and one ORT session per
//! graph, on the chosen execution provider. Sessions sit behind mutexes so one loaded model can
//! serve several [`crate::engine::Engine`]s (clones) across threads.

use super::device::Device;
use super::shared_weights::SharedWeights;
use crate::error::{Error, Result};
use ort::session::Session;
use st_checkpoint::Manifest;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Session settings.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// ONNX Runtime library (else ORT_DYLIB_PATH, else the project venv).
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (ORT's default when `None`).
    pub threads: Option<usize>,
    pub device: Device,
    /// When the device's provider cannot be had, run on CPU (logged) instead of failing.
    pub cpu_fallback: bool,
    /// Whether the vision tower's session stays loaded between frames.
    pub vision: VisionSession,
    /// How the vision tower's weights are held in memory on the CPU.
    pub vision_weights: VisionWeights,
    /// Write ONNX Runtime's per-node profile of each session to `PREFIX-<graph>_<time>.json` when
    /// the session is released (the vision tower's after each frame when it is on demand).
    pub profile: Option<PathBuf>,
    /// Whether the loaded weights are backed with huge pages (Linux; best effort).
    pub huge_pages: HugePages,
}

/// Whether [`Engine::load`](super::Engine::load) puts the weights on transparent huge pages (Linux;
/// best effort; docs/PERFORMANCE.md#huge-pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HugePages {
    /// On the CPU, the decoder's weights that st's own operators read in place are read into st's memory
    /// on huge pages and lent to ORT ([`super::shared_weights`]); after the sessions are built,
    /// `MADV_HUGEPAGE` + `MADV_COLLAPSE` on each other mapping of at least 16 MiB that is at least 90 %
    /// resident. A decode step then takes ~500× fewer TLB misses on the weights.
    #[default]
    On,
    /// Leave the kernel's default pages (and ORT's mapping of the weight file).
    Off,
}

/// How the CPU provider holds the vision tower's weights (docs/PERFORMANCE.md#edge-options). An export
/// stores them in fp16 (`vision = "fp16"`, the default recipe) as `Cast(weight) → Gemm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VisionWeights {
    /// As exported: fp16 weights stay fp16 and are widened to f32 for each matmul (ORT's Cast and Gemm
    /// run per call; one tiny frame at load faults them in). The tower takes its file's size in memory;
    /// each new frame takes a little longer to encode (0.1–0.5 s on the 7B: the widening and the packing
    /// MLAS does for a weight it could not prepack), and the model loads faster.
    #[default]
    AsExported,
    /// Widened to f32 copies once at load (ORT folds the Cast and prepacks the weights): twice the
    /// fp16 file's size in memory (+1.36 GB on the 7B), a longer load, the fastest encoding.
    Widened,
}

/// Whether the vision tower's fp16 weights stay as exported on `device`, widened for each matmul
/// (`VisionWeights::AsExported` over an fp16 export on the CPU); an fp32 tower has nothing to widen.
fn widens_vision_per_call(manifest: &Manifest, device: &Device, opts: &SessionOptions) -> bool {
    let linear = manifest.graphs.get("vision").and_then(|g| g.precision.get("linear"));
    linear.map(String::as_str) == Some("fp16")
        && matches!(device, Device::Cpu)
        && opts.vision_weights == VisionWeights::AsExported
}

/// ORT's graph transformers that fold `Cast(fp16 initializer)` into an f32 initializer at load; both
/// must be off to keep the weights as exported (either alone folds it).
const CAST_FOLDING: &str = "ConstantFolding;FuseFp16InitializerToFp32NodeTransformer";

/// When the vision tower's session is in memory (docs/PERFORMANCE.md#edge-options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VisionSession {
    /// Loaded with the model and kept: every frame encodes at once.
    #[default]
    Resident,
    /// Loaded for each frame's encoding and released after it: the tower's weights (and ORT's
    /// working copies of them) are out of memory while questions are answered, at the cost of a
    /// session load per frame.
    OnDemand,
}

/// One graph's session: loaded with the model, or (on-demand graphs) opened for each use and
/// released after it.
pub struct Graph {
    pub name: &'static str,
    slot: Slot,
}

enum Slot {
    /// The session drops before the weights it reads in place (field order).
    Resident {
        session: Mutex<Session>,
        weights: Option<SharedWeights>,
    },
    OnDemand {
        lock: Mutex<()>,
        open: Box<Reopen>,
    },
}

/// What opening an on-demand graph again needs.
struct Reopen {
    dir: PathBuf,
    manifest: Manifest,
    device: Device,
    opts: SessionOptions,
}

/// A graph's session, held for one call; an on-demand session is released when this drops.
pub enum GraphSession<'a> {
    Resident(MutexGuard<'a, Session>),
    /// The session drops before the lock (field order), so the next use finds the memory free.
    OnDemand(Session, MutexGuard<'a, ()>),
}

impl std::ops::Deref for GraphSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        match self {
            GraphSession::Resident(g) => g,
            GraphSession::OnDemand(s, _) => s,
        }
    }
}

impl std::ops::DerefMut for GraphSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        match self {
            GraphSession::Resident(g) => g,
            GraphSession::OnDemand(s, _) => s,
        }
    }
}

impl Graph {
    /// The session for one call (an on-demand graph loads it now).
    pub fn lock(&self) -> Result<GraphSession<'_>> {
        let poisoned = || Error::Ort {
            context: format!("{} graph", self.name),
            reason: "a thread panicked while running it; reload the model".into(),
        };
        match &self.slot {
            Slot::Resident { session, .. } => Ok(GraphSession::Resident(session.lock().map_err(|_| poisoned())?)),
            Slot::OnDemand { lock, open } => {
                let guard = lock.lock().map_err(|_| poisoned())?;
                let (session, _) = open_session(&open.dir, &open.manifest, self.name, &open.device, &open.opts, false)?;
                Ok(GraphSession::OnDemand(session, guard))
            }
        }
    }

    /// Bytes of this graph's weights that ORT reads from st's huge-page copy (`--huge-pages on`, the CPU,
    /// st's own int4 operators): 0 where ORT reads or maps the weight file itself.
    pub fn lent_weight_bytes(&self) -> usize {
        match &self.slot {
            Slot::Resident { weights: Some(w), .. } => w.lent_bytes(),
            _ => 0,
        }
    }

    /// Whether the session stays loaded between calls.
    pub fn is_resident(&self) -> bool {
        matches!(self.slot, Slot::Resident { .. })
    }
}

pub struct ExportedModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vision: Graph,
    pub embed: Graph,
    pub decoder: Graph,
    /// The decoder takes GroupQueryAttention inputs (`seqlens_k`) rather than a bias.
    pub decoder_uses_gqa: bool,
    /// Where the decoder's shared KV buffers live (the GPU where st's attention runs on CUDA).
    pub kv_place: super::decoder::KvPlace,
    /// The device the sessions run on (CPU after a fallback).
    pub device: Device,
}

/// A graph's session: loaded now and kept, or (`resident` false) checked now (the file exists and
/// its session opens with the manifest's signature), then released until each use opens it again.
fn open_graph(
    dir: &Path,
    manifest: &Manifest,
    name: &'static str,
    device: &Device,
    opts: &SessionOptions,
    resident: bool,
) -> Result<Graph> {
    let (session, weights) = open_session(dir, manifest, name, device, opts, resident)?;
    if resident {
        return Ok(Graph { name, slot: Slot::Resident { session: Mutex::new(session), weights } });
    }
    drop(session);
    let open =
        Reopen { dir: dir.to_path_buf(), manifest: manifest.clone(), device: device.clone(), opts: opts.clone() };
    Ok(Graph { name, slot: Slot::OnDemand { lock: Mutex::new(()), open: Box::new(open) } })
}

/// Open a graph's session; for the resident decoder on the CPU with huge pages on, also the copy of its
/// external data that the session reads its weights from (see [`super::shared_weights`]).
fn open_session(
    dir: &Path,
    manifest: &Manifest,
    name: &'static str,
    device: &Device,
    opts: &SessionOptions,
    resident: bool,
) -> Result<(Session, Option<SharedWeights>)> {
    let env = &crate::engine::init_ort(opts.ort_lib.as_deref())?.environment;
    super::ops::apply_cpu_isa_var()?;
    let spec = manifest.graphs.get(name).ok_or_else(|| Error::Ort {
        context: format!("{}", dir.join("manifest.json").display()),
        reason: format!("no `{name}` graph listed"),
    })?;
    let path = dir.join(&spec.file);
    if !path.is_file() {
        return Err(Error::Checkpoint(st_checkpoint::Error::MissingFile { path }));
    }
    let ort_err = |e: String| Error::Ort { context: path.display().to_string(), reason: e };
    let mut builder = Session::builder(env).map_err(|e| ort_err(e.to_string()))?;
    if let Some(n) = opts.threads {
        builder = builder.with_intra_threads(n).map_err(|e| ort_err(e.to_string()))?;
    }
    device.register(&mut builder)?;
    if name == "vision" && widens_vision_per_call(manifest, device, opts) {
        builder = builder.with_disabled_optimizers(CAST_FOLDING).map_err(|e| ort_err(e.to_string()))?;
    }
    if let Some(prefix) = &opts.profile {
        let mut file = prefix.as_os_str().to_owned();
        file.push(format!("-{name}"));
        builder = builder.with_profiling(file).map_err(|e| ort_err(e.to_string()))?;
    }
    // st's operators: the CPU kernels always, the CUDA kernels too on a GPU provider.
    builder = builder
        .with_operators(super::ops::domain_for(device).map_err(|e| ort_err(e.to_string()))?)
        .map_err(|e| ort_err(e.to_string()))?;
    let weights = if name == "decoder" && resident && matches!(device, Device::Cpu) && opts.huge_pages == HugePages::On
    {
        super::shared_weights::lend_to_session(&path, &mut builder)?
    } else {
        None
    };
    let commit_guard = super::ops::commit_lock();
    let session = builder.commit_from_file(&path).map_err(|e| match device {
        Device::Cpu => ort_err(e.to_string()),
        _ => Error::Provider {
            device: device.to_string(),
            reason: format!("{}: {e}", path.display()),
            hint: super::device::GPU_HINT,
        },
    });
    drop(commit_guard);
    let session = session?;
    check_signature(&path, "input", &spec.inputs, session.inputs())?;
    check_signature(&path, "output", &spec.outputs, session.outputs())?;
    Ok((session, weights))
}

/// The graph's inputs or outputs against the manifest's: the same names in order and the same fixed
/// sizes, so a graph file from another export (another model's dims) is named at load, not met as a
/// shape error mid-generation.
fn check_signature(
    path: &Path,
    what: &str,
    want: &[st_checkpoint::manifest::IoSpec],
    got: &[ort::value::Outlet],
) -> Result<()> {
    let bad = |reason: String| Error::Ort {
        context: path.display().to_string(),
        reason: format!("{reason}: the graph does not belong to this export's manifest.json; re-export the model"),
    };
    let names = |v: Vec<&str>| v.join(", ");
    if want.len() != got.len() || want.iter().zip(got).any(|(w, g)| w.name != g.name()) {
        return Err(bad(format!(
            "{what}s [{}] where the manifest lists [{}]",
            names(got.iter().map(|g| g.name()).collect()),
            names(want.iter().map(|w| w.name.as_str()).collect())
        )));
    }
    for (w, g) in want.iter().zip(got) {
        let Some(shape) = g.dtype().tensor_shape() else { continue };
        let fixed = |i: usize| w.shape.get(i).and_then(serde_json::Value::as_i64);
        let mismatch = shape.len() != w.shape.len()
            || shape.iter().enumerate().any(|(i, &d)| fixed(i).is_some_and(|f| d >= 0 && d != f));
        if mismatch {
            return Err(bad(format!(
                "{what} `{}` has shape {:?} where the manifest says {:?}",
                w.name,
                &shape[..],
                w.shape
            )));
        }
    }
    Ok(())
}

impl ExportedModel {
    /// Whether the vision tower is resident with its fp16 weights kept as exported, widened for each
    /// matmul (what the engine warms up at load).
    pub fn widens_vision_per_call(&self, opts: &SessionOptions) -> bool {
        self.vision.is_resident() && widens_vision_per_call(&self.manifest, &self.device, opts)
    }

    /// Open `dir` (written by `st export`): check its manifest, then load each graph it lists on
    /// `opts.device`, falling back to CPU only when `opts.cpu_fallback` allows it.
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let manifest = Manifest::from_dir(dir)?;
        let library = &crate::engine::init_ort(opts.ort_lib.as_deref())?.library;
        let attempt = |device: &Device| -> Result<(Graph, Graph, Graph)> {
            device.check_available(&library.path)?;
            Ok((
                open_graph(dir, &manifest, "vision", device, opts, opts.vision == VisionSession::Resident)?,
                open_graph(dir, &manifest, "embed", device, opts, true)?,
                open_graph(dir, &manifest, "decoder", device, opts, true)?,
            ))
        };
        let (device, (vision, embed, decoder)) = match attempt(&opts.device) {
            Ok(g) => (opts.device.clone(), g),
            Err(e @ Error::Provider { .. }) if opts.cpu_fallback => {
                tracing::warn!("{e}; running on CPU instead");
                (Device::Cpu, attempt(&Device::Cpu)?)
            }
            Err(e) => return Err(e),
        };
        let decoder_uses_gqa =
            manifest.graphs.get("decoder").is_some_and(|g| g.inputs.iter().any(|i| i.name == "seqlens_k"));
        let kv_place = super::decoder::KvPlace::for_model(&manifest, &device)?;
        Ok(Self { dir: dir.to_path_buf(), vision, embed, decoder, decoder_uses_gqa, kv_place, device, manifest })
    }
}

//! LoRA adapters in PEFT's on-disk format, both ways, without any tensor library: read by the
//! exporter (to merge into the weights) and by the trainer (to resume or fine-tune further),
//! written by the trainer.
//!
//! - `adapter_config.json`: `peft_type` "LORA", `r`, `lora_alpha`, `target_modules`,
//!   `lora_dropout`, `bias` "none", `use_rslora`, `use_dora`, `task_type`,
//!   `base_model_name_or_path`. `st` writes `target_modules` as a regex that PEFT fullmatches
//!   against module names: the vision tower's MLP uses the same gate/up/down names as the text
//!   model, so a plain list would also adapt the tower.
//! - `adapter_model.safetensors`: `<prefix>.layers.{i}.<module>.lora_A.weight` [r, in] and
//!   `….lora_B.weight` [out, r]. `st` writes the prefix current transformers + PEFT use for
//!   Qwen2.5-VL, `base_model.model.model.language_model`, and reads it or the older
//!   `base_model.model.model` (a wrong prefix would load as a silent no-op elsewhere).
//!
//! Module names inside `st` are the checkpoint's canonical ones (`model.layers.3.mlp.up_proj`).

use crate::config::ModelConfig;
use crate::error::{Error, Result, read_json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The key prefix current transformers + PEFT write for Qwen2.5-VL's language model.
pub const KEY_PREFIX: &str = "base_model.model.model.language_model.";
/// The prefix of older files (transformers < 4.52 nesting).
pub const LEGACY_KEY_PREFIX: &str = "base_model.model.model.";

/// The text model's linears a LoRA adapter may target, in PEFT's short names.
pub const TEXT_LINEARS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `q_proj` → `self_attn.q_proj`, `up_proj` → `mlp.up_proj`; `None` for other names.
pub fn module_path(short: &str) -> Option<&'static str> {
    Some(match short {
        "q_proj" => "self_attn.q_proj",
        "k_proj" => "self_attn.k_proj",
        "v_proj" => "self_attn.v_proj",
        "o_proj" => "self_attn.o_proj",
        "gate_proj" => "mlp.gate_proj",
        "up_proj" => "mlp.up_proj",
        "down_proj" => "mlp.down_proj",
        _ => return None,
    })
}

/// The regex `st` writes as `target_modules`: exactly the text model's chosen linears.
pub fn target_regex(targets: &[String]) -> String {
    let attn: Vec<&str> = targets.iter().map(String::as_str).filter(|t| t.ends_with("_proj") && is_attn(t)).collect();
    let mlp: Vec<&str> = targets.iter().map(String::as_str).filter(|t| !is_attn(t)).collect();
    let mut alts = Vec::new();
    if !attn.is_empty() {
        alts.push(format!("self_attn\\.({})", attn.join("|")));
    }
    if !mlp.is_empty() {
        alts.push(format!("mlp\\.({})", mlp.join("|")));
    }
    format!(".*\\.layers\\.\\d+\\.({})", alts.join("|"))
}

fn is_attn(short: &str) -> bool {
    matches!(short, "q_proj" | "k_proj" | "v_proj" | "o_proj")
}

/// `target_modules` as PEFT accepts it: a list of names or one regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Regex(String),
    List(Vec<String>),
}

/// The fields of `adapter_config.json` that `st` reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
}

fn bias_none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// What `st` writes for a new adapter.
    pub fn new(r: usize, lora_alpha: f64, targets: &[String], lora_dropout: f64, use_rslora: bool) -> Self {
        Self {
            peft_type: "LORA".into(),
            r,
            lora_alpha,
            target_modules: TargetModules::Regex(target_regex(targets)),
            lora_dropout,
            bias: "none".into(),
            use_rslora,
            use_dora: false,
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            inference_mode: true,
            fan_in_fan_out: false,
        }
    }

    /// The factor on B·A: α / r, or α / √r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }
}

/// One adapted linear: A [r, in] and B [out, r], row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    /// `(r, in)` and `(out, r)`.
    pub a_shape: [usize; 2],
    pub b_shape: [usize; 2],
}

/// An adapter read from (or to be written to) a PEFT directory.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// By canonical module name, `model.layers.{i}.self_attn.q_proj`.
    pub modules: BTreeMap<String, LoraPair>,
}

fn invalid(path: &Path, field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidField { path: path.to_path_buf(), field, reason: reason.into() }
}

/// `model.layers.N.<module>` from a PEFT key, with `lora_A`/`lora_B`; errors name the key.
fn parse_key<'k>(path: &Path, key: &'k str) -> Result<(String, &'k str)> {
    let rest = key.strip_prefix(KEY_PREFIX).or_else(|| key.strip_prefix(LEGACY_KEY_PREFIX)).ok_or_else(|| {
        invalid(path, "tensor name", format!("`{key}` has neither the prefix `{KEY_PREFIX}` nor `{LEGACY_KEY_PREFIX}`"))
    })?;
    if rest.starts_with("visual.") || rest.starts_with("language_model.visual") {
        return Err(invalid(
            path,
            "tensor name",
            format!("`{key}` adapts the vision tower; st merges and trains adapters of the text model's linears only"),
        ));
    }
    let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, "A")
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, "B")
    } else {
        return Err(invalid(
            path,
            "tensor name",
            format!("`{key}` is not a lora_A/lora_B weight (DoRA, biases and embeddings are not supported)"),
        ));
    };
    let known = module
        .strip_prefix("layers.")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(i, m)| i.parse::<usize>().is_ok() && TEXT_LINEARS.iter().any(|t| module_path(t) == Some(m)));
    if !known {
        return Err(invalid(
            path,
            "tensor name",
            format!("`{key}`: `{module}` is not one of the text model's linears"),
        ));
    }
    Ok((format!("model.{module}"), which))
}

impl LoraAdapter {
    /// Read `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32, bf16 or f16).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::MissingFile { path: dir });
        }
        let cfg_path = dir.join(CONFIG_FILE);
        let config: AdapterConfig = read_json(&cfg_path)?;
        if config.peft_type != "LORA" {
            return Err(invalid(&cfg_path, "peft_type", format!("{:?} (st reads LORA adapters)", config.peft_type)));
        }
        if config.r == 0 {
            return Err(invalid(&cfg_path, "r", "is 0"));
        }
        if config.use_dora {
            return Err(invalid(&cfg_path, "use_dora", "DoRA adapters are not supported"));
        }
        if config.bias != "none" {
            return Err(invalid(&cfg_path, "bias", format!("{:?} (st supports \"none\")", config.bias)));
        }
        if config.fan_in_fan_out {
            return Err(invalid(&cfg_path, "fan_in_fan_out", "true is for Conv1D models, not Qwen2.5-VL"));
        }
        if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
            return Err(invalid(&cfg_path, "rank_pattern", "per-module ranks or alphas are not supported"));
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = crate::Weights::open_file(&weights_path)?;
        let mut halves: BTreeMap<String, (Option<LoraPair>, Option<LoraPair>)> = BTreeMap::new();
        for key in weights.names().map(str::to_string).collect::<Vec<_>>() {
            let (module, which) = parse_key(&weights_path, &key)?;
            let t = weights.get(&key)?;
            let [rows, cols] = match t.shape {
                &[r, c] => [r, c],
                other => {
                    return Err(Error::ShapeMismatch {
                        path: weights_path.clone(),
                        name: key.clone(),
                        expected: vec![config.r, 0],
                        found: other.to_vec(),
                    });
                }
            };
            let values = t.to_f32()?.into_owned();
            let pair = LoraPair { a: values, b: Vec::new(), a_shape: [rows, cols], b_shape: [0, 0] };
            let slot = halves.entry(module).or_default();
            if which == "A" { slot.0 = Some(pair) } else { slot.1 = Some(pair) }
        }
        let mut modules = BTreeMap::new();
        for (module, (a, b)) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(invalid(
                    &weights_path,
                    "tensor name",
                    format!("`{module}` has only one of lora_A / lora_B"),
                ));
            };
            modules.insert(module, LoraPair { a: a.a, a_shape: a.a_shape, b: b.a, b_shape: b.a_shape });
        }
        if modules.is_empty() {
            return Err(invalid(&weights_path, "tensors", "the adapter holds no LoRA weights"));
        }
        Ok(Self { dir, config, modules })
    }

    /// Check every module against the checkpoint's shapes: the rank is the config's `r`,
    /// A is [r, in] and B [out, r] of the linear it adapts. Errors name the tensor.
    pub fn validate(&self, model: &ModelConfig) -> Result<()> {
        let path = self.dir.join(WEIGHTS_FILE);
        let t = &model.text;
        for (module, pair) in &self.modules {
            let layer: usize = module
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse().ok())
                .unwrap_or(usize::MAX);
            if layer >= t.num_hidden_layers {
                return Err(invalid(
                    &path,
                    "tensor name",
                    format!(
                        "`{module}`: layer {layer} does not exist (the checkpoint has {} layers): adapter from another model?",
                        t.num_hidden_layers
                    ),
                ));
            }
            let (n_in, n_out) = linear_shape(model, module);
            let r = self.config.r;
            let expect_a = [r, n_in];
            let expect_b = [n_out, r];
            if pair.a_shape != expect_a {
                return Err(Error::ShapeMismatch {
                    path: path.clone(),
                    name: format!("{module}.lora_A.weight"),
                    expected: expect_a.to_vec(),
                    found: pair.a_shape.to_vec(),
                });
            }
            if pair.b_shape != expect_b {
                return Err(Error::ShapeMismatch {
                    path: path.clone(),
                    name: format!("{module}.lora_B.weight"),
                    expected: expect_b.to_vec(),
                    found: pair.b_shape.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Write the adapter into `dir` (created if needed): both files go to temporary names and
    /// are renamed into place, so an interrupted write leaves the previous files intact.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (module, pair) in &self.modules {
            let rest = module.strip_prefix("model.").unwrap_or(module);
            tensors.push((format!("{KEY_PREFIX}{rest}.lora_A.weight"), le_bytes(&pair.a), pair.a_shape.to_vec()));
            tensors.push((format!("{KEY_PREFIX}{rest}.lora_B.weight"), le_bytes(&pair.b), pair.b_shape.to_vec()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, bytes, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Safetensors { path: dir.join(WEIGHTS_FILE), reason: e.to_string() })
            })
            .collect::<Result<_>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Safetensors { path: dir.join(WEIGHTS_FILE), reason: e.to_string() })?;
        write_then_rename(&dir.join(WEIGHTS_FILE), &bytes)?;
        let json = serde_json::to_vec_pretty(&self.config)
            .map_err(|source| Error::Json { path: dir.join(CONFIG_FILE), source })?;
        write_then_rename(&dir.join(CONFIG_FILE), &json)
    }
}

/// (in, out) of a canonical text linear name.
pub fn linear_shape(model: &ModelConfig, module: &str) -> (usize, usize) {
    let t = &model.text;
    let (h, q, kv, ff) =
        (t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, t.intermediate_size);
    match module.rsplit('.').next().unwrap_or_default() {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, ff),
        "down_proj" => (ff, h),
        _ => (0, 0),
    }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write `bytes` to `path` through a temporary file in the same directory, synced and renamed; on
/// an error the temporary file is removed and `path` is as it was.
pub fn write_then_rename(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .map_err(Error::io(&tmp))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(Error::io(path)));
    if written.is_err() {
        // A full disk or an unwritable directory leaves nothing behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

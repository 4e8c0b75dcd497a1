//! `config.json` of a Qwen2.5-VL checkpoint, in either on-disk layout:
//! - flat (transformers 4.x, the published Qwen2.5-VL-7B / SpatialThinker files): text fields at
//!   the top, `rope_scaling: {"type": "mrope", "mrope_section": [...]}`, `rope_theta` beside it;
//! - nested (transformers 5.x): text fields in `text_config`, rope in `rope_parameters`.
//!
//! Both resolve to one [`ModelConfig`]; every shape the exporter and runtime need comes from here.

use crate::error::{Error, Result, read_json};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The only architecture `st` runs.
pub const MODEL_TYPE: &str = "qwen2_5_vl";

/// The resolved model description. Serializable, so the export manifest and a training backend
/// can carry it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub tie_word_embeddings: bool,
    /// `torch_dtype` / `dtype` as written by the source, if any (informational).
    pub source_dtype: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Rotary frequency slots taken from the t, h, w axes; sums to `head_dim / 2`.
    pub mrope_section: Vec<usize>,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub out_hidden_size: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: f64,
    pub hidden_act: String,
    /// Base of the 2-D rotary embedding inside the tower (10000 in every released checkpoint).
    pub rope_theta: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Values per patch row of `pixel_values`: channels × temporal × patch × patch (1176 for 7B).
    pub fn patch_values(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Image side granularity in pixels: patch × merge (28 for 7B).
    pub fn image_factor(&self) -> usize {
        self.patch_size * self.spatial_merge_size
    }
}

/// Text fields as they may appear at the top level or inside `text_config`.
#[derive(Debug, Default, Deserialize)]
struct RawText {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    tie_word_embeddings: Option<bool>,
    image_token_id: Option<u32>,
    video_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    mrope_section: Option<Vec<usize>>,
    rope_theta: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RawVision {
    depth: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_heads: Option<usize>,
    #[serde(alias = "in_chans")]
    in_channels: Option<usize>,
    out_hidden_size: Option<usize>,
    patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    window_size: Option<usize>,
    fullatt_block_indexes: Option<Vec<usize>>,
    tokens_per_second: Option<f64>,
    hidden_act: Option<String>,
    rope_parameters: Option<RawRope>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    text_config: Option<RawText>,
    vision_config: Option<RawVision>,
    #[serde(flatten)]
    top: RawText,
}

impl ModelConfig {
    /// Parse `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(path)?;
        Self::resolve(raw, path)
    }

    /// Parse config JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        Self::resolve(raw, path)
    }

    fn resolve(raw: RawConfig, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        match raw.model_type.as_deref() {
            Some(MODEL_TYPE) => {}
            Some(other) => {
                return Err(Error::UnsupportedArchitecture { path, found: other.to_string() });
            }
            None => {
                return Err(Error::MissingField { path, field: "model_type" });
            }
        }
        let nested = raw.text_config.unwrap_or_default();
        let top = raw.top;
        let f = Fields { path: &path };
        // A nested `text_config` wins over the flat top level.
        macro_rules! pick {
            ($field:ident) => {
                nested.$field.clone().or(top.$field.clone())
            };
        }
        let rope = nested
            .rope_parameters
            .as_ref()
            .or(nested.rope_scaling.as_ref())
            .or(top.rope_parameters.as_ref())
            .or(top.rope_scaling.as_ref());
        let rope_theta = rope.and_then(|r| r.rope_theta).or(pick!(rope_theta));
        let mrope_section = rope.and_then(|r| r.mrope_section.clone());

        let hidden_size = f.req(pick!(hidden_size), "hidden_size")?;
        let num_attention_heads = f.req(pick!(num_attention_heads), "num_attention_heads")?;
        let head_dim = match pick!(head_dim) {
            Some(d) => d,
            None => {
                f.ensure(
                    num_attention_heads > 0 && hidden_size % num_attention_heads == 0,
                    "num_attention_heads",
                    || format!("hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads"),
                )?;
                hidden_size / num_attention_heads
            }
        };
        let text = TextConfig {
            hidden_size,
            intermediate_size: f.req(pick!(intermediate_size), "intermediate_size")?,
            num_hidden_layers: f.req(pick!(num_hidden_layers), "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: pick!(num_key_value_heads).unwrap_or(num_attention_heads),
            head_dim,
            vocab_size: f.req(pick!(vocab_size), "vocab_size")?,
            rms_norm_eps: f.req(pick!(rms_norm_eps), "rms_norm_eps")?,
            rope_theta: f.req(rope_theta, "rope_theta")?,
            mrope_section: f.req(mrope_section, "mrope_section")?,
            max_position_embeddings: f.req(pick!(max_position_embeddings), "max_position_embeddings")?,
            hidden_act: pick!(hidden_act).unwrap_or_else(|| "silu".into()),
        };
        let v = raw.vision_config.ok_or(Error::MissingField { path: path.clone(), field: "vision_config" })?;
        let vision = VisionConfig {
            depth: f.req(v.depth, "vision_config.depth")?,
            hidden_size: f.req(v.hidden_size, "vision_config.hidden_size")?,
            intermediate_size: f.req(v.intermediate_size, "vision_config.intermediate_size")?,
            num_heads: f.req(v.num_heads, "vision_config.num_heads")?,
            in_channels: v.in_channels.unwrap_or(3),
            out_hidden_size: f.req(v.out_hidden_size, "vision_config.out_hidden_size")?,
            patch_size: f.req(v.patch_size, "vision_config.patch_size")?,
            spatial_merge_size: f.req(v.spatial_merge_size, "vision_config.spatial_merge_size")?,
            temporal_patch_size: f.req(v.temporal_patch_size, "vision_config.temporal_patch_size")?,
            window_size: f.req(v.window_size, "vision_config.window_size")?,
            fullatt_block_indexes: f.req(v.fullatt_block_indexes, "vision_config.fullatt_block_indexes")?,
            tokens_per_second: v.tokens_per_second.unwrap_or(2.0),
            hidden_act: v.hidden_act.unwrap_or_else(|| "silu".into()),
            rope_theta: v.rope_parameters.and_then(|r| r.rope_theta).unwrap_or(10_000.0),
        };
        let config = ModelConfig {
            image_token_id: f.req(top.image_token_id.or(nested.image_token_id), "image_token_id")?,
            video_token_id: f.req(top.video_token_id.or(nested.video_token_id), "video_token_id")?,
            vision_start_token_id: f
                .req(top.vision_start_token_id.or(nested.vision_start_token_id), "vision_start_token_id")?,
            vision_end_token_id: f
                .req(top.vision_end_token_id.or(nested.vision_end_token_id), "vision_end_token_id")?,
            tie_word_embeddings: top.tie_word_embeddings.or(nested.tie_word_embeddings).unwrap_or(false),
            source_dtype: top.torch_dtype.or(top.dtype).or(nested.torch_dtype).or(nested.dtype),
            text,
            vision,
        };
        config.validate(&path)?;
        Ok(config)
    }

    /// Internal consistency: the divisibility and sums the graphs rely on.
    fn validate(&self, path: &PathBuf) -> Result<()> {
        let f = Fields { path };
        let t = &self.text;
        for (name, v) in [
            ("hidden_size", t.hidden_size),
            ("num_hidden_layers", t.num_hidden_layers),
            ("num_attention_heads", t.num_attention_heads),
            ("num_key_value_heads", t.num_key_value_heads),
            ("vocab_size", t.vocab_size),
            ("head_dim", t.head_dim),
        ] {
            f.ensure(v > 0, name, || "must be positive".into())?;
        }
        f.ensure(t.num_attention_heads.is_multiple_of(t.num_key_value_heads), "num_key_value_heads", || {
            format!(
                "{} attention heads are not a multiple of {} KV heads",
                t.num_attention_heads, t.num_key_value_heads
            )
        })?;
        f.ensure(t.head_dim.is_multiple_of(2), "head_dim", || format!("{} is odd; rotary needs pairs", t.head_dim))?;
        let sum: usize = t.mrope_section.iter().sum();
        f.ensure(t.mrope_section.len() == 3 && sum == t.head_dim / 2, "mrope_section", || {
            format!("{:?} must be 3 sections summing to head_dim/2 = {}", t.mrope_section, t.head_dim / 2)
        })?;
        let v = &self.vision;
        f.ensure(v.num_heads > 0 && v.hidden_size.is_multiple_of(v.num_heads), "vision_config.num_heads", || {
            format!("vision hidden_size {} is not a multiple of {} heads", v.hidden_size, v.num_heads)
        })?;
        for (name, x) in [
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.temporal_patch_size", v.temporal_patch_size),
            ("vision_config.depth", v.depth),
        ] {
            f.ensure(x > 0, name, || "must be positive".into())?;
        }
        f.ensure(v.window_size.is_multiple_of(v.image_factor()), "vision_config.window_size", || {
            format!("{} px is not a multiple of patch × merge = {}", v.window_size, v.image_factor())
        })?;
        if let Some(&bad) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(Error::InvalidField {
                path: path.clone(),
                field: "vision_config.fullatt_block_indexes",
                reason: format!("block {bad} does not exist (depth {})", v.depth),
            });
        }
        Ok(())
    }
}

struct Fields<'a> {
    path: &'a PathBuf,
}

impl Fields<'_> {
    fn req<T>(&self, v: Option<T>, field: &'static str) -> Result<T> {
        v.ok_or_else(|| Error::MissingField { path: self.path.clone(), field })
    }
    fn ensure(&self, ok: bool, field: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
        if ok { Ok(()) } else { Err(Error::InvalidField { path: self.path.clone(), field, reason: reason() }) }
    }
}

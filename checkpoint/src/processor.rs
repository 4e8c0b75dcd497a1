//! The checkpoint's processor files: image preprocessing settings (`preprocessor_config.json`,
//! or the `image_processor` section of transformers 5's `processor_config.json`) and the chat
//! template (`chat_template.jinja`, `chat_template.json`, or inside `tokenizer_config.json`).

use crate::error::{Error, Result, read_json};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Image preprocessing settings of the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    /// Where these values came from.
    pub source: Option<PathBuf>,
}

impl Default for ImageProcessorConfig {
    /// Qwen2.5-VL's published `preprocessor_config.json`.
    fn default() -> Self {
        Self {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            source: None,
        }
    }
}

#[derive(Deserialize, Default)]
struct RawSize {
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    shortest_edge: Option<u64>,
    longest_edge: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawImageProcessor {
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    size: Option<RawSize>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    patch_size: Option<usize>,
    merge_size: Option<usize>,
    temporal_patch_size: Option<usize>,
}

#[derive(Deserialize)]
struct RawProcessor {
    image_processor: Option<RawImageProcessor>,
}

impl ImageProcessorConfig {
    /// Read from `preprocessor_config.json`, else `processor_config.json`; defaults (the
    /// published Qwen2.5-VL values) when neither exists.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let proc_ = dir.join("processor_config.json");
        let (raw, source) = if pre.is_file() {
            (read_json::<RawImageProcessor>(&pre)?, pre)
        } else if proc_.is_file() {
            let p: RawProcessor = read_json(&proc_)?;
            (p.image_processor.unwrap_or_default(), proc_)
        } else {
            return Ok(Self::default());
        };
        let d = Self::default();
        let size = raw.size.unwrap_or_default();
        let cfg = Self {
            min_pixels: raw.min_pixels.or(size.min_pixels).or(size.shortest_edge).unwrap_or(d.min_pixels),
            max_pixels: raw.max_pixels.or(size.max_pixels).or(size.longest_edge).unwrap_or(d.max_pixels),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            source: Some(source.clone()),
        };
        if cfg.max_pixels < cfg.min_pixels || cfg.image_std.iter().any(|&s| s <= 0.0) {
            return Err(Error::InvalidField {
                path: source,
                field: "image_processor",
                reason: "max_pixels below min_pixels, or a non-positive image_std".into(),
            });
        }
        Ok(cfg)
    }
}

/// The chat template and the file it was read from.
pub fn chat_template(dir: &Path) -> Result<(String, PathBuf)> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(Error::io(&jinja))?;
        return Ok((text, jinja));
    }
    #[derive(Deserialize)]
    struct WithTemplate {
        chat_template: Option<serde_json::Value>,
    }
    for name in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let raw: WithTemplate = read_json(&path)?;
        match raw.chat_template {
            Some(serde_json::Value::String(s)) => return Ok((s, path)),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => {
                let default = list.iter().find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                if let Some(s) = default.and_then(|t| t.get("template")).and_then(|t| t.as_str()) {
                    return Ok((s.to_string(), path));
                }
            }
            _ => {}
        }
    }
    Err(Error::MissingFile { path: jinja })
}

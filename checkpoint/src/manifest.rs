//! `manifest.json` of an exported model directory: what `st export` wrote and everything the
//! runtime needs to run it without the source checkpoint.

use crate::config::ModelConfig;
use crate::error::{Error, Result, read_json};
use crate::generation::GenerationConfig;
use crate::processor::ImageProcessorConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped whenever the layout of exported directories changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub producer: String,
    pub source: SourceInfo,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub image_processor: ImageProcessorConfig,
    /// Graph name (`embed`, `decoder`, …) → its files and signature.
    pub graphs: BTreeMap<String, GraphSpec>,
    /// Tokenizer and chat template files copied beside the graphs.
    pub files: Vec<String>,
    /// Special tokens of the tokenizer (`added_tokens` marked special in tokenizer.json): text → id.
    pub special_tokens: BTreeMap<String, u32>,
}

/// The special tokens of a `tokenizer.json` (its `added_tokens` with `special: true`).
pub fn special_tokens(tokenizer_json: &Path) -> Result<BTreeMap<String, u32>> {
    #[derive(Deserialize)]
    struct Added {
        id: u32,
        content: String,
        #[serde(default)]
        special: bool,
    }
    #[derive(Deserialize)]
    struct Tok {
        #[serde(default)]
        added_tokens: Vec<Added>,
    }
    let tok: Tok = read_json(tokenizer_json)?;
    Ok(tok.added_tokens.into_iter().filter(|a| a.special).map(|a| (a.content, a.id)).collect())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub dir: String,
    /// FNV-1a 64 over config.json and every shard's safetensors header and length: changes when
    /// the source's config, tensor names, dtypes, shapes or sizes change.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub file: String,
    pub data_file: Option<String>,
    /// Precision of each part, e.g. {"linear": "fp32", "embed_tokens": "fp32"}.
    pub precision: BTreeMap<String, String>,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoSpec {
    pub name: String,
    pub dtype: String,
    /// Fixed sizes as numbers, symbolic ones (`batch`, `seq`, `past`, …) as names.
    pub shape: Vec<serde_json::Value>,
}

impl Manifest {
    /// Read `DIR/manifest.json`, refusing other format versions with a clear error.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let raw: serde_json::Value = read_json(&path)?;
        Self::from_value(raw, path)
    }

    /// Parse the text of a manifest read from `path` (named in errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw = serde_json::from_str(text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?;
        Self::from_value(raw, path.to_path_buf())
    }

    fn from_value(raw: serde_json::Value, path: std::path::PathBuf) -> Result<Self> {
        let version = raw.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(Error::InvalidField {
                path,
                field: "format_version",
                reason: format!("{version:?} is not {FORMAT_VERSION}; re-export the model with this version of st"),
            });
        }
        serde_json::from_value(raw).map_err(|source| Error::Json { path, source })
    }
}

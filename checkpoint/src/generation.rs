//! `generation_config.json`: stop ids and the checkpoint's default sampling settings.

use crate::error::{Result, read_json};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Every id that ends generation (`eos_token_id` may be one id or a list in the file).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct Raw {
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    repetition_penalty: Option<f64>,
}

impl GenerationConfig {
    /// Parse `DIR/generation_config.json`; a checkpoint without one gets the defaults
    /// (no stop ids beyond those the tokenizer names).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let raw: Raw = read_json(&path)?;
        Ok(Self {
            eos_token_ids: match raw.eos_token_id {
                None => vec![],
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id,
            do_sample: raw.do_sample,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            repetition_penalty: raw.repetition_penalty,
        })
    }
}

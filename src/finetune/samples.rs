//! Rows to [`st_train::sft::SftSample`]s. Bad rows (bad JSON, a missing image, no completion
//! and no ground truth) are reported, skipped and counted; an image is encoded once however
//! many rows ask about it.

use crate::data::Row;
use crate::engine::Engine;
use crate::error::{Error, Result};
use st_train::sft::SftSample;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A row that could not be used, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// 1-based line number in the rows file.
    pub line: usize,
    pub reason: String,
}

#[derive(Debug)]
pub struct Prepared {
    pub samples: Vec<SftSample>,
    pub skipped: Vec<Skipped>,
    pub images: usize,
}

struct Encoded {
    embeds: Tensor,
    size: (u32, u32),
    grid: [usize; 3],
    tokens: usize,
}

/// Read `rows` (JSON lines; image paths relative to the file) and build one sample per usable row,
/// at most `limit` samples.
pub fn prepare(engine: &Engine, rows: &Path, limit: Option<usize>) -> Result<Prepared> {
    let text = std::fs::read_to_string(rows).map_err(|source| Error::Io { path: rows.to_path_buf(), source })?;
    let base = rows.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cache = ImageCache::default();
    let (mut samples, mut skipped) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|n| samples.len() >= n) {
            break;
        }
        match sample(engine, &base, line, &mut cache) {
            Ok(s) => samples.push(s),
            Err(reason) => skipped.push(Skipped { line: i + 1, reason }),
        }
    }
    Ok(Prepared { samples, skipped, images: cache.len() })
}

/// A row's prompt, encoded as the runtime encodes it.
pub struct Prompt {
    pub ids: Vec<u32>,
    pub grid: [usize; 3],
    pub size: (u32, u32),
    pub embeds: Tensor,
}

/// Images encoded once per path for the whole run.
#[derive(Default)]
pub struct ImageCache {
    cache: HashMap<PathBuf, Encoded>,
}

impl ImageCache {
    pub fn len(&self) -> usize {
        self.cache.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The prompt of `row` (image relative to `base`): SpatialThinker's template, token ids with
    /// the image's pad tokens, and the image embeddings from the vision graph.
    pub fn prompt(&mut self, engine: &Engine, base: &Path, row: &Row) -> Result<Prompt, String> {
        let image = row.images.first().ok_or("the row names no image")?;
        let question = row.full_question().ok_or("the row has no `problem` or `question`")?;
        let path = base.join(image);
        if !self.cache.contains_key(&path) {
            let pre = engine.preprocessor.load(&path).map_err(|e| e.to_string())?;
            let embeds = engine.image_embeds(&pre).map_err(|e| e.to_string())?;
            let (rows, cols) = embeds.dim();
            let flat = embeds.as_standard_layout().iter().copied().collect::<Vec<f32>>();
            let t = Tensor::from_slice(&flat).view([rows as i64, cols as i64]);
            let merge = engine.preprocessor.geometry.merge_size;
            let enc =
                Encoded { embeds: t, size: pre.original_size, grid: pre.grid_thw, tokens: pre.num_image_tokens(merge) };
            self.cache.insert(path.clone(), enc);
        }
        let enc = &self.cache[&path];
        let prompt = &engine.prompt;
        let text = prompt.spatialthinker_prompt(enc.size.0, enc.size.1, &question).map_err(|e| e.to_string())?;
        let ids = prompt.encode(&text, &[enc.tokens]).map_err(|e| e.to_string())?;
        Ok(Prompt { ids, grid: enc.grid, size: enc.size, embeds: enc.embeds.shallow_clone() })
    }
}

/// `prompt` followed by `completion` (tokenized on its own) and the end-of-turn token, which
/// belongs to the completion and to the loss; positions from `st::rope`.
pub fn sequence(engine: &Engine, prompt: &Prompt, completion: &str) -> Result<SftSample, String> {
    let tok = &engine.prompt.tokenizer;
    let mut ids = prompt.ids.clone();
    let prompt_len = ids.len();
    ids.extend(tok.encode(completion).map_err(|e| e.to_string())?);
    ids.push(tok.special.im_end);
    let merge = engine.preprocessor.geometry.merge_size;
    let pos =
        crate::rope::mrope_positions(&ids, tok.special.image_pad, &[prompt.grid], merge).map_err(|e| e.to_string())?;
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let positions = [0, 1, 2].map(|a| pos.ids.row(a).to_vec());
    Ok(SftSample {
        labels: SftSample::completion_labels(&ids, prompt_len),
        ids,
        positions,
        image_embeds: Some(prompt.embeds.shallow_clone()),
    })
}

fn sample(engine: &Engine, base: &Path, line: &str, cache: &mut ImageCache) -> Result<SftSample, String> {
    let row: Row = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let completion = crate::data::completion::completion(&row)?;
    let prompt = cache.prompt(engine, base, &row)?;
    sequence(engine, &prompt, &completion)
}

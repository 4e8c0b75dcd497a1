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
    let mut cache: HashMap<PathBuf, Encoded> = HashMap::new();
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

fn sample(
    engine: &Engine,
    base: &Path,
    line: &str,
    cache: &mut HashMap<PathBuf, Encoded>,
) -> Result<SftSample, String> {
    let row: Row = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let image = row.images.first().ok_or("the row names no image")?;
    let question = row.full_question().ok_or("the row has no `problem` or `question`")?;
    let completion = crate::data::completion::completion(&row)?;
    let path = base.join(image);
    if !cache.contains_key(&path) {
        let pre = engine.preprocessor.load(&path).map_err(|e| e.to_string())?;
        let embeds = engine.image_embeds(&pre).map_err(|e| e.to_string())?;
        let (rows, cols) = embeds.dim();
        let flat = embeds.as_standard_layout().iter().copied().collect::<Vec<f32>>();
        let t = Tensor::from_slice(&flat).view([rows as i64, cols as i64]);
        let merge = engine.preprocessor.geometry.merge_size;
        cache.insert(
            path.clone(),
            Encoded { embeds: t, size: pre.original_size, grid: pre.grid_thw, tokens: pre.num_image_tokens(merge) },
        );
    }
    let enc = &cache[&path];
    let prompt = &engine.prompt;
    let text = prompt.spatialthinker_prompt(enc.size.0, enc.size.1, &question).map_err(|e| e.to_string())?;
    let mut ids = prompt.encode(&text, &[enc.tokens]).map_err(|e| e.to_string())?;
    let prompt_len = ids.len();
    ids.extend(prompt.tokenizer.encode(&completion).map_err(|e| e.to_string())?);
    // The end-of-turn token belongs to the completion (and to the loss).
    ids.push(prompt.tokenizer.special.im_end);
    let merge = engine.preprocessor.geometry.merge_size;
    let pos = crate::rope::mrope_positions(&ids, prompt.tokenizer.special.image_pad, &[enc.grid], merge)
        .map_err(|e| e.to_string())?;
    let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let positions = [0, 1, 2].map(|a| pos.ids.row(a).to_vec());
    Ok(SftSample {
        labels: SftSample::completion_labels(&ids, prompt_len),
        ids,
        positions,
        image_embeds: Some(enc.embeds.shallow_clone()),
    })
}

//! `st finetune --rollouts FILE` (GRPO on given completions): one JSON object per line, the
//! STVQA row's own fields plus `completions` (G strings). Each completion is tokenized on its
//! own and followed by the end-of-turn token (part of the completion and of the loss), scored with
//! the row's ground truth by `st::reward`, so one update can be reproduced outside `st` exactly.

use super::samples::{ImageCache, sequence};
use crate::data::Row;
use crate::engine::Engine;
use st_train::grpo::Rollout;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Line {
    #[serde(flatten)]
    row: Row,
    completions: Vec<String>,
}

/// The rollouts of a file, checked up front: every line parses, has `ground_truth` and G
/// completions. Errors name the line.
pub struct RolloutFile {
    pub path: PathBuf,
    rows: Vec<(usize, Row, Vec<String>)>,
    pub group: usize,
}

impl RolloutFile {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--rollouts {}: {e}", path.display()))?;
        let mut rows = Vec::new();
        let mut group = None;
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line: Line =
                serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
            if line.row.ground_truth.is_none() {
                anyhow::bail!(
                    "{} line {}: no `ground_truth`: GRPO scores completions against it",
                    path.display(),
                    i + 1
                );
            }
            match group {
                None => group = Some(line.completions.len()),
                Some(g) if g != line.completions.len() => anyhow::bail!(
                    "{} line {}: {} completions, the first line has {g} (every prompt needs the same group size)",
                    path.display(),
                    i + 1,
                    line.completions.len()
                ),
                _ => {}
            }
            rows.push((i + 1, line.row, line.completions));
        }
        let group = group.ok_or_else(|| anyhow::anyhow!("{}: no rollouts", path.display()))?;
        Ok(Self { path: path.to_path_buf(), rows, group })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The scored rollouts of step `step`: prompts `step·P … step·P + P − 1` (cycling through the
    /// file), their G completions in file order.
    pub fn step(
        &self,
        engine: &Engine,
        cache: &mut ImageCache,
        step: usize,
        prompts: usize,
        sparse: bool,
    ) -> st_train::Result<Vec<Rollout>> {
        let base = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut out = Vec::with_capacity(prompts * self.group);
        for k in 0..prompts {
            let (line, row, completions) = &self.rows[(step * prompts + k) % self.rows.len()];
            let err =
                |e: String| st_train::Error::File { path: self.path.clone(), reason: format!("line {line}: {e}") };
            let prompt = cache.prompt(engine, &base, row).map_err(err)?;
            let gt = row.ground_truth.as_deref().unwrap_or_default();
            let question = row.full_question().unwrap_or_default();
            for c in completions {
                let sample = sequence(engine, &prompt, c).map_err(err)?;
                let scored = crate::reward::score(c, gt, prompt.size, &question, sparse);
                out.push(Rollout {
                    sample,
                    text: c.clone(),
                    reward: scored.reward,
                    components: scored.components,
                    valid: scored.valid,
                    error: scored.error,
                });
            }
        }
        Ok(out)
    }
}

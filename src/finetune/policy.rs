//! GRPO rollouts sampled from the policy: per step, P prompts from the rows (a seeded shuffle per
//! epoch, deterministic in the step), G completions each from the trainer's own model with its
//! KV cache (the G sequences batched after one prefill), drawn by the runtime's sampling chain
//! (temperature, top-p; seeded per step, prompt and sequence) with the SPEC-format grammar in
//! front when `--grammar` is on; scored with `st::reward`. The sampled token ids are what is
//! trained on (nothing is re-tokenized).

use super::samples::ImageCache;
use crate::data::Row;
use crate::decode::grammar::{Bounds, OutputSpec};
use crate::decode::{Sampler, SamplingParams};
use crate::engine::Engine;
use st_train::grpo::Rollout;
use st_train::sft::SftSample;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub struct PolicyRollouts {
    pub rows: Vec<Row>,
    pub base: PathBuf,
    pub group: usize,
    pub prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub grammar: bool,
    pub sparse: bool,
    pub seed: u64,
    pub cache: ImageCache,
}

fn err(e: impl std::fmt::Display) -> st_train::Error {
    st_train::Error::InvalidArgument { name: "rollouts", reason: e.to_string() }
}

impl PolicyRollouts {
    /// Rows with a ground truth from `path` (a row without one is an error naming its line).
    pub fn rows_from(path: &Path) -> anyhow::Result<Vec<Row>> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--data {}: {e}", path.display()))?;
        let mut rows = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: Row =
                serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
            if row.ground_truth.is_none() {
                anyhow::bail!(
                    "{} line {}: no `ground_truth`: GRPO scores completions against it",
                    path.display(),
                    i + 1
                );
            }
            rows.push(row);
        }
        if rows.is_empty() {
            anyhow::bail!("{}: no rows", path.display());
        }
        Ok(rows)
    }

    pub fn step(
        &mut self,
        engine: &Engine,
        model: &st_train::TextModel,
        step: usize,
    ) -> st_train::Result<Vec<Rollout>> {
        let picks = st_train::sft::stream_indices(self.rows.len(), self.seed, step * self.prompts, self.prompts);
        let stops: Vec<i64> = engine.end_of_turn().iter().map(|&t| i64::from(t)).collect();
        let tok = &engine.prompt.tokenizer;
        let merge = engine.preprocessor.geometry.merge_size;
        let mut out = Vec::with_capacity(self.prompts * self.group);
        for (k, &r) in picks.iter().enumerate() {
            let row = self.rows[r].clone();
            let prompt = self.cache.prompt(engine, &self.base, &row).map_err(err)?;
            let question = row.full_question().unwrap_or_default();
            let pos =
                crate::rope::mrope_positions(&prompt.ids, tok.special.image_pad, &[prompt.grid], merge).map_err(err)?;
            let ids: Vec<i64> = prompt.ids.iter().map(|&t| i64::from(t)).collect();
            let n = ids.len() as i64;
            let flat: Vec<i64> = pos.ids.iter().copied().collect();
            let batch = st_train::Batch {
                input_ids: Tensor::from_slice(&ids).view([1, n]),
                positions: Tensor::from_slice(&flat).view([3, 1, n]),
                image_embeds: Some(prompt.embeds.shallow_clone()),
            };
            let mut samplers = Vec::with_capacity(self.group);
            for i in 0..self.group {
                let seed = self.seed ^ ((step as u64) << 32) ^ ((k as u64) << 16) ^ i as u64;
                let params = SamplingParams {
                    temperature: Some(self.temperature),
                    top_p: self.top_p,
                    seed,
                    ..Default::default()
                };
                let mut s = Sampler::new(&params).map_err(err)?;
                if self.grammar {
                    let spec = OutputSpec::budgeted(prompt.size, &question, &Bounds::default(), self.max_new_tokens);
                    s.push_front(Box::new(engine.grammar_factory().map_err(err)?.matcher(spec)));
                }
                samplers.push(s);
            }
            let mut histories: Vec<Vec<u32>> = vec![prompt.ids.clone(); self.group];
            // A completion never holds vision tokens (an image pad there would have no embedding).
            let banned: Vec<usize> = [tok.special.image_pad, tok.special.vision_start, tok.special.vision_end]
                .iter()
                .map(|&t| t as usize)
                .collect();
            let mut pick = |i: usize, row: &mut [f32]| -> st_train::Result<st_train::generate::Pick> {
                let s = &mut samplers[i];
                let forced = s.forced().map_err(err)?;
                let t = match forced.first() {
                    Some(&f) => f,
                    None => {
                        for &b in &banned {
                            if let Some(v) = row.get_mut(b) {
                                *v = f32::NEG_INFINITY;
                            }
                        }
                        s.sample(row, &histories[i]).map_err(err)?
                    }
                };
                s.accept(t).map_err(err)?;
                histories[i].push(t);
                Ok(st_train::generate::Pick { token: i64::from(t), done: stops.contains(&i64::from(t)) })
            };
            let completions =
                st_train::generate::sample_group(model, &batch, pos.delta, self.group, self.max_new_tokens, &mut pick)?;
            let gt = row.ground_truth.as_deref().unwrap_or_default();
            for c in completions {
                let toks: Vec<u32> = c.iter().map(|&t| t as u32).collect();
                // Tokens that do not decode (not expected from a well-formed tokenizer) are a
                // reward error like any other: reward 0, the reason in samples.jsonl.
                let (text, undecodable) = match tok.decode(&toks, true) {
                    Ok(t) => (t, None),
                    Err(e) => (String::new(), Some(format!("the completion's tokens do not decode: {e}"))),
                };
                let mut all = ids.clone();
                all.extend_from_slice(&c);
                let p = crate::rope::mrope_positions(
                    &all.iter().map(|&t| t as u32).collect::<Vec<_>>(),
                    tok.special.image_pad,
                    &[prompt.grid],
                    merge,
                )
                .map_err(err)?;
                let sample = SftSample {
                    labels: SftSample::completion_labels(&all, ids.len()),
                    positions: [0, 1, 2].map(|a| p.ids.row(a).to_vec()),
                    ids: all,
                    image_embeds: Some(prompt.embeds.shallow_clone()),
                };
                let scored = match undecodable {
                    Some(e) => {
                        crate::reward::Scored { reward: 0.0, components: [0.0; 4], valid: false, error: Some(e) }
                    }
                    None => crate::reward::score(&text, gt, prompt.size, &question, self.sparse),
                };
                out.push(Rollout {
                    sample,
                    text,
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

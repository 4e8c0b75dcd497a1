//! Generation with the trainable model's KV cache: the prompt in one forward, then one token
//! per step at position `index + rope_delta` on all three M-RoPE axes.

use crate::error::Result;
use crate::model::{Batch, KvCache, TextModel};
use tch::{Kind, Tensor};

/// Greedy continuation of one prompt: up to `max_new` tokens, stopping after any of `stops`.
/// `rope_delta` is `st::rope::MropePositions::delta` of the prompt.
pub fn greedy(model: &TextModel, prompt: &Batch, rope_delta: i64, max_new: usize, stops: &[i64]) -> Result<Vec<i64>> {
    tch::no_grad(|| {
        let mut cache = KvCache::default();
        let h = model.hidden(prompt, Some(&mut cache))?;
        let len = h.size()[1];
        let mut next = argmax_last(model, &h);
        let mut out = Vec::with_capacity(max_new);
        for step in 0..max_new {
            out.push(next);
            if stops.contains(&next) || step + 1 == max_new {
                break;
            }
            let pos = len + step as i64 + rope_delta;
            let batch = Batch {
                input_ids: Tensor::from_slice(&[next]).view([1, 1]),
                positions: Tensor::from_slice(&[pos, pos, pos]).view([3, 1, 1]),
                image_embeds: None,
            };
            let h = model.hidden(&batch, Some(&mut cache))?;
            next = argmax_last(model, &h);
        }
        Ok(out)
    })
}

fn argmax_last(model: &TextModel, h: &Tensor) -> i64 {
    let last = h.select(1, h.size()[1] - 1);
    let logits = model.logits(&last).to_kind(Kind::Float);
    i64::try_from(logits.argmax(-1, false).view([-1]).get(0)).unwrap_or(0)
}

/// What the caller's sampler says about one sequence's next token.
pub struct Pick {
    pub token: i64,
    /// The sequence ends with this token (end of turn, or the caller's limit).
    pub done: bool,
}

/// `g` continuations of one prompt, batched: the prompt is prefilled once, its KV cache copied to
/// the `g` rows, then every step feeds the `g` last tokens in one forward (rows that have ended
/// feed their last token again and are ignored). `pick(i, logits)` chooses sequence i's next
/// token from its f32 logits row. Returns each sequence's tokens (the ending token included).
pub fn sample_group(
    model: &TextModel,
    prompt: &Batch,
    rope_delta: i64,
    g: usize,
    max_new: usize,
    pick: &mut dyn FnMut(usize, &mut [f32]) -> Result<Pick>,
) -> Result<Vec<Vec<i64>>> {
    tch::no_grad(|| {
        let mut cache = KvCache::default();
        let h = model.hidden(prompt, Some(&mut cache))?;
        let len = h.size()[1];
        cache.repeat_batch(g as i64);
        let last = model.logits(&h.select(1, len - 1)).to_kind(Kind::Float).to_device(tch::Device::Cpu);
        let first: Vec<f32> = Vec::<f32>::try_from(last.view([-1]))?;
        let mut rows: Vec<Vec<f32>> = vec![first; g];
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); g];
        let mut done = vec![false; g];
        for step in 0..max_new {
            let mut feed = Vec::with_capacity(g);
            for i in 0..g {
                if !done[i] {
                    let p = pick(i, &mut rows[i])?;
                    out[i].push(p.token);
                    done[i] = p.done || out[i].len() >= max_new;
                }
                feed.push(out[i].last().copied().unwrap_or(0));
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let pos = len + step as i64 + rope_delta;
            let batch = Batch {
                input_ids: Tensor::from_slice(&feed).view([g as i64, 1]),
                positions: Tensor::full([3, g as i64, 1], pos, (Kind::Int64, tch::Device::Cpu)),
                image_embeds: None,
            };
            let h = model.hidden(&batch, Some(&mut cache))?;
            let logits = model.logits(&h.select(1, 0)).to_kind(Kind::Float).to_device(tch::Device::Cpu);
            for (i, row) in rows.iter_mut().enumerate() {
                if !done[i] {
                    *row = Vec::<f32>::try_from(logits.get(i as i64))?;
                }
            }
        }
        Ok(out)
    })
}

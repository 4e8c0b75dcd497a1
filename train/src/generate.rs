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

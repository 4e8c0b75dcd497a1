//! M-RoPE position ids (docs/FORMATS.md#the-model), as transformers' `get_rope_index` computes them for images:
//! text tokens advance one position on all three axes; the tokens of an image with merged grid
//! (t, h, w) get (start + t_i, start + row, start + col); the text after it resumes at
//! start + max(h, w) (for a still image, t = 1). Decode steps use index + `delta`.

use crate::error::{Error, Result};
use ndarray::Array2;

/// Positions of a prompt on the (t, h, w) axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    /// `[3, seq]`: rows are the t, h and w axes.
    pub ids: Array2<i64>,
    /// `max(position) + 1 − seq`: add to a token's index to get its position after the prompt.
    pub delta: i64,
}

impl MropePositions {
    /// The position (same on all axes) of the token at `index` ≥ prompt length.
    pub fn position_after_prompt(&self, index: usize) -> i64 {
        index as i64 + self.delta
    }
}

/// Compute M-RoPE ids for `input_ids` whose `image_token` runs belong, in order, to images with
/// patch grids `grids` (`[t, h, w]` in patches, before merging by `merge_size`).
pub fn mrope_positions(
    input_ids: &[u32],
    image_token: u32,
    grids: &[[usize; 3]],
    merge_size: usize,
) -> Result<MropePositions> {
    let n = input_ids.len();
    let mut ids = Array2::<i64>::zeros((3, n));
    let mut grids_left = grids.iter();
    let mut pos: i64 = 0;
    let mut i = 0;
    while i < n {
        if input_ids[i] != image_token {
            for axis in 0..3 {
                ids[[axis, i]] = pos;
            }
            pos += 1;
            i += 1;
            continue;
        }
        let &[t, h, w] = grids_left.next().ok_or_else(|| Error::Prompt {
            reason: format!("image placeholder at token {i} has no image grid (only {} given)", grids.len()),
        })?;
        if merge_size == 0 || h % merge_size != 0 || w % merge_size != 0 {
            return Err(Error::Prompt {
                reason: format!("grid {t}x{h}x{w} is not divisible by merge size {merge_size}"),
            });
        }
        let (gh, gw) = (h / merge_size, w / merge_size);
        let count = t * gh * gw;
        if i + count > n || input_ids[i..i + count].iter().any(|&x| x != image_token) {
            return Err(Error::Prompt {
                reason: format!("image at token {i} needs {count} consecutive placeholder tokens for grid {t}x{h}x{w}"),
            });
        }
        let mut k = i;
        for ti in 0..t {
            for r in 0..gh {
                for c in 0..gw {
                    ids[[0, k]] = pos + ti as i64;
                    ids[[1, k]] = pos + r as i64;
                    ids[[2, k]] = pos + c as i64;
                    k += 1;
                }
            }
        }
        pos += gh.max(gw) as i64;
        i += count;
    }
    if grids_left.next().is_some() {
        return Err(Error::Prompt {
            reason: format!("{} image grids given but fewer image placeholders found", grids.len()),
        });
    }
    let max = ids.iter().copied().max().unwrap_or(-1);
    Ok(MropePositions { ids, delta: max + 1 - n as i64 })
}

/// M-RoPE rotary tables for `positions` ([3, seq], the t/h/w rows): `(cos, sin)`, each
/// [seq, head_dim]. Slot j of the first half takes its angle from axis `a` where j falls in the
/// a-th `mrope_section`; the second half repeats the first (HF `rotate_half` layout). Computed in
/// f32 in the reference's order (inv_freq = 1 / θ^(2j/d), angle = position · inv_freq).
pub fn mrope_cos_sin(
    positions: ndarray::ArrayView2<'_, i64>,
    head_dim: usize,
    theta: f64,
    mrope_section: &[usize],
) -> Result<(Array2<f32>, Array2<f32>)> {
    let half = head_dim / 2;
    if positions.nrows() != 3 || mrope_section.iter().sum::<usize>() != half {
        return Err(Error::Prompt {
            reason: format!(
                "M-RoPE needs [3, seq] positions and sections summing to {half}; got {:?} and {mrope_section:?}",
                positions.shape()
            ),
        });
    }
    let axis_of: Vec<usize> = mrope_section.iter().enumerate().flat_map(|(a, &n)| std::iter::repeat_n(a, n)).collect();
    let inv_freq: Vec<f32> =
        (0..half).map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / head_dim as f32)).collect();
    let seq = positions.ncols();
    let mut cos = Array2::<f32>::zeros((seq, head_dim));
    let mut sin = Array2::<f32>::zeros((seq, head_dim));
    for s in 0..seq {
        for j in 0..half {
            let angle = positions[[axis_of[j], s]] as f32 * inv_freq[j];
            let (sn, cs) = angle.sin_cos();
            cos[[s, j]] = cs;
            cos[[s, j + half]] = cs;
            sin[[s, j]] = sn;
            sin[[s, j + half]] = sn;
        }
    }
    Ok((cos, sin))
}

//! Per-image index tensors of the exported vision graph, computed in Rust (see
//! `st_export::vision`): the padded window order of patches, the 2-D rotary tables, the
//! attention biases that mask padding, and the map from merged slots back to raster order.
//!
//! Windows follow transformers' `get_window_index`: the merged grid is cut into
//! (window / patch / merge)² cells per window, windows in raster order, cells in raster order
//! inside a window, each cell's merge² patches contiguous. Cells past the image edge are
//! padding here (the reference drops them; attention masks them, which gives the same result).

use crate::error::{Error, Result};
use ndarray::{Array2, Array4};
use st_checkpoint::VisionConfig;

/// Inputs of the vision graph for one image, besides `pixel_values`.
#[derive(Debug, Clone)]
pub struct VisionInputs {
    pub patch_index: Vec<i64>,
    pub rope_cos: Array2<f32>,
    pub rope_sin: Array2<f32>,
    pub window_bias: Array4<f32>,
    pub full_bias: Array4<f32>,
    pub merge_index: Vec<i64>,
}

/// Compute the vision inputs for an image with patch grid `[t, h, w]`.
pub fn vision_inputs(grid: [usize; 3], v: &VisionConfig) -> Result<VisionInputs> {
    let [t, h, w] = grid;
    let m = v.spatial_merge_size;
    let cell_side = v.window_size / m / v.patch_size;
    if m == 0 || cell_side == 0 || h % m != 0 || w % m != 0 {
        return Err(Error::InvalidArgument {
            name: "image grid",
            reason: format!("{t}x{h}x{w} does not divide into {m}×{m} merge units and windows"),
        });
    }
    let (lh, lw) = (h / m, w / m);
    let (nwh, nww) = (lh.div_ceil(cell_side), lw.div_ceil(cell_side));
    let m2 = m * m;
    let patches = t * h * w;
    let window_slots = cell_side * cell_side * m2;
    let windows = t * nwh * nww;
    let slots = windows * window_slots;

    let mut patch_index = Vec::with_capacity(slots);
    let mut positions: Vec<Option<(usize, usize)>> = Vec::with_capacity(slots);
    let mut merged_slot_of_cell = vec![0i64; t * lh * lw];
    for tt in 0..t {
        for wy in 0..nwh {
            for wx in 0..nww {
                for cy in 0..cell_side {
                    for cx in 0..cell_side {
                        let (r, c) = (wy * cell_side + cy, wx * cell_side + cx);
                        let valid = r < lh && c < lw;
                        if valid {
                            merged_slot_of_cell[(tt * lh + r) * lw + c] = (patch_index.len() / m2) as i64;
                        }
                        for k in 0..m2 {
                            if valid {
                                let cell = (tt * lh + r) * lw + c;
                                patch_index.push((cell * m2 + k) as i64);
                                positions.push(Some((r * m + k / m, c * m + k % m)));
                            } else {
                                patch_index.push(patches as i64);
                                positions.push(None);
                            }
                        }
                    }
                }
            }
        }
    }

    // 2-D rotary: the first half of each head rotates by (h, w) angles, the second repeats it.
    let hd = v.head_dim();
    let spatial = hd / 2;
    let inv_freq: Vec<f32> =
        (0..spatial / 2).map(|j| 1.0f32 / (v.rope_theta as f32).powf((2 * j) as f32 / spatial as f32)).collect();
    let mut rope_cos = Array2::<f32>::ones((slots, hd));
    let mut rope_sin = Array2::<f32>::zeros((slots, hd));
    for (s, pos) in positions.iter().enumerate() {
        let Some((ph, pw)) = *pos else { continue };
        for (j, &f) in inv_freq.iter().enumerate() {
            for (axis, p) in [ph, pw].into_iter().enumerate() {
                let (sn, cs) = (p as f32 * f).sin_cos();
                let col = axis * inv_freq.len() + j;
                rope_cos[[s, col]] = cs;
                rope_cos[[s, col + spatial]] = cs;
                rope_sin[[s, col]] = sn;
                rope_sin[[s, col + spatial]] = sn;
            }
        }
    }
    let mask = |valid: bool| if valid { 0.0 } else { f32::MIN };
    let window_bias = Array4::from_shape_fn((windows, 1, 1, window_slots), |(wi, _, _, j)| {
        mask(positions[wi * window_slots + j].is_some())
    });
    let full_bias = Array4::from_shape_fn((1, 1, 1, slots), |(_, _, _, j)| mask(positions[j].is_some()));
    Ok(VisionInputs { patch_index, rope_cos, rope_sin, window_bias, full_bias, merge_index: merged_slot_of_cell })
}

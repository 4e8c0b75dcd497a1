//! Normalise and cut the resized image into `pixel_values` rows, in the HF processor's order:
//! rows run over merge windows in raster order and, inside each, its merge×merge patches in
//! raster order; a row holds channel × temporal × patch × patch values (a still image is
//! repeated over the temporal patch).

use super::PatchGeometry;
use crate::error::{Error, Result};
use image::RgbImage;
use ndarray::Array2;

/// Per-channel normalisation after ×1/255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageNorm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageNorm {
    /// OpenAI CLIP's statistics, used by Qwen2.5-VL's `preprocessor_config.json`.
    pub const CLIP: ImageNorm =
        ImageNorm { mean: [0.481_454_66, 0.457_827_5, 0.408_210_73], std: [0.268_629_54, 0.261_302_6, 0.275_777_1] };
}

/// `pixel_values` [grid_t·grid_h·grid_w, 3·T·P·P] and `grid_thw` for one still image whose
/// sides are multiples of patch × merge.
pub fn patchify(img: &RgbImage, g: &PatchGeometry, norm: &ImageNorm) -> Result<(Array2<f32>, [usize; 3])> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (p, m, t) = (g.patch_size, g.merge_size, g.temporal_patch_size);
    if p == 0 || m == 0 || t == 0 || w % (p * m) != 0 || h % (p * m) != 0 {
        return Err(Error::InvalidArgument {
            name: "image size",
            reason: format!("{w}x{h} is not a multiple of {} (patch {p} × merge {m})", p * m),
        });
    }
    let (gh, gw) = (h / p, w / p);
    let cols = 3 * t * p * p;
    // Lookup per channel and byte value: ((v / 255) − mean) / std, computed in f32 as the reference.
    let lut: Vec<[f32; 256]> =
        (0..3).map(|c| std::array::from_fn(|v| (v as f32 * (1.0 / 255.0) - norm.mean[c]) / norm.std[c])).collect();
    let raw = img.as_raw();
    let mut out = Array2::<f32>::zeros((gh * gw, cols));
    let mut row = 0;
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (py0, px0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    let mut dst = out.row_mut(row);
                    let mut col = 0;
                    for (c, lut_c) in lut.iter().enumerate() {
                        for _ in 0..t {
                            for y in py0..py0 + p {
                                for x in px0..px0 + p {
                                    dst[col] = lut_c[raw[(y * w + x) * 3 + c] as usize];
                                    col += 1;
                                }
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
    Ok((out, [1, gh, gw]))
}

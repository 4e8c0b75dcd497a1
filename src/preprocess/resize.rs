//! `smart_resize` (qwen-vl-utils, bit-for-bit including Python's round-half-to-even) and the
//! Pillow-compatible bicubic resize (fast_image_resize's Catmull-Rom convolution, which is
//! Pillow's BICUBIC filter with a = −0.5).

use crate::error::{Error, Result};
use fast_image_resize as fir;
use image::RgbImage;

/// Aspect ratios above this are refused, as by the reference.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Pixel budget of the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBounds {
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl PixelBounds {
    /// The reference's defaults: 4 and 16384 merged tokens (4·28² … 16384·28² pixels).
    pub fn default_for_factor(factor: usize) -> Self {
        let f2 = (factor * factor) as u64;
        Self { min_pixels: 4 * f2, max_pixels: 16_384 * f2 }
    }
}

/// Target (height, width), both multiples of `factor`, keeping the aspect ratio and the
/// pixel count within `bounds`. Mirrors qwen-vl-utils' `smart_resize`.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: usize,
    bounds: &PixelBounds,
    source_name: &str,
) -> Result<(u32, u32)> {
    if bounds.max_pixels < bounds.min_pixels {
        return Err(Error::InvalidArgument {
            name: "max_pixels",
            reason: format!("{} is below min_pixels {}", bounds.max_pixels, bounds.min_pixels),
        });
    }
    if height == 0 || width == 0 || factor == 0 {
        return Err(Error::ImageLimit {
            source_name: source_name.to_string(),
            reason: format!("{width}x{height} has no pixels"),
            limit: "min side 1 px".into(),
        });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(Error::AspectRatio {
            source_name: source_name.to_string(),
            width,
            height,
            ratio,
            max: MAX_ASPECT_RATIO,
        });
    }
    let round_by = |x: f64| (x / f).round_ties_even() * f;
    let mut h_bar = f.max(round_by(h));
    let mut w_bar = f.max(round_by(w));
    let (min_p, max_p) = (bounds.min_pixels as f64, bounds.max_pixels as f64);
    if h_bar * w_bar > max_p {
        let beta = ((h * w) / max_p).sqrt();
        h_bar = (h / beta / f).floor() * f;
        w_bar = (w / beta / f).floor() * f;
    } else if h_bar * w_bar < min_p {
        let beta = (min_p / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < f || w_bar < f {
        return Err(Error::InvalidArgument {
            name: "max_pixels",
            reason: format!(
                "{} pixels cannot hold a {width}x{height} image at one {factor}-px cell per side; raise max_pixels",
                bounds.max_pixels
            ),
        });
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// Resize RGB to `width`×`height` with Pillow's bicubic filter, in Pillow's order: a
/// horizontal pass rounded to u8, then a vertical pass. (fast_image_resize runs u8 images
/// vertical-first when both sides change, which moves values by several levels near edges, so
/// each axis is resized on its own here.)
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let horizontal = if src.width() != width { resize_axis(src, width, src.height())? } else { src.clone() };
    if horizontal.height() != height { resize_axis(&horizontal, width, height) } else { Ok(horizontal) }
}

/// One convolution pass: exactly one of the two sides differs from the source.
fn resize_axis(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let resize_err = |e: &dyn std::fmt::Display| Error::InvalidArgument { name: "resize", reason: e.to_string() };
    let src_view = fir::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fir::PixelType::U8x3)
        .map_err(|e| resize_err(&e))?;
    let mut dst = fir::images::Image::new(width, height, fir::PixelType::U8x3);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom));
    fir::Resizer::new().resize(&src_view, &mut dst, &options).map_err(|e| resize_err(&e))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| Error::InvalidArgument { name: "resize", reason: "output buffer size mismatch".into() })
}

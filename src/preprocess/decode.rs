//! Decoding under explicit limits, then RGB exactly as qwen-vl-utils' `to_rgb` (PIL) makes it:
//! RGBA is composited over white, every other mode converted the way PIL's `convert("RGB")`
//! does (16-bit channels keep their high byte; 16-bit grayscale is clipped to 255 as PIL's
//! `I;16 → RGB` does). JPEG is decoded by libjpeg-turbo's code (mozjpeg, a libjpeg-turbo fork)
//! with libjpeg's defaults — the decoder PIL uses — because other decoders upsample chroma
//! differently and move ~6 % of values by 1–2 levels.

use crate::error::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Bounds checked against the image header before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Largest decoder allocation in bytes.
    pub max_alloc: u64,
    /// Smallest accepted side in pixels.
    pub min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_width: 16_384, max_height: 16_384, max_alloc: 1 << 30, min_side: 1 }
    }
}

/// Decode the image file at `path` into RGB.
pub fn decode_file(path: &Path, limits: &DecodeLimits, apply_exif: bool) -> Result<RgbImage> {
    let name = path.display().to_string();
    let len = std::fs::metadata(path).map_err(Error::io(path))?.len();
    if len > limits.max_alloc {
        return Err(Error::ImageLimit {
            source_name: name,
            reason: format!("file is {len} bytes"),
            limit: format!("{} MiB", limits.max_alloc >> 20),
        });
    }
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    decode_bytes(&bytes, &name, limits, apply_exif)
}

/// Decode an encoded image held in memory into RGB; `source_name` appears in errors.
pub fn decode_bytes(bytes: &[u8], source_name: &str, limits: &DecodeLimits, apply_exif: bool) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes));
    let decode_err = |e: image::ImageError| map_image_error(e, source_name, limits);
    let name = source_name;
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| Error::ImageDecode { source_name: name.to_string(), reason: e.to_string() })?;
    if reader.format().is_none() {
        return Err(Error::ImageDecode {
            source_name: name.to_string(),
            reason: "unknown or unsupported image format".into(),
        });
    }
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    if reader.format() == Some(image::ImageFormat::Png) {
        check_png_palette(bytes, name)?;
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (w, h) = decoder.dimensions();
    if w.min(h) < limits.min_side {
        return Err(Error::ImageLimit {
            source_name: name.to_string(),
            reason: format!("{w}x{h} is too small"),
            limit: format!("min side {} px", limits.min_side),
        });
    }
    let orientation = if apply_exif {
        decoder.orientation().map_err(decode_err)?
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let mut img = match decode_jpeg_like_pil(bytes, is_jpeg, name)? {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        // A decoder's panic is an error naming the input, never a lost process (defence in depth: the
        // one panic found so far, png's on a bad palette, is refused by `check_png_palette` first).
        None => caught(name, "decoder", || DynamicImage::from_decoder(decoder).map_err(decode_err))?,
    };
    img.apply_orientation(orientation);
    to_rgb(img, name)
}

/// Decode a grayscale / YCbCr / RGB JPEG with libjpeg's default settings (islow IDCT, fancy
/// upsampling), as PIL does. `None` for other images (and CMYK JPEGs), which the image crate
/// decodes.
fn decode_jpeg_like_pil(bytes: &[u8], is_jpeg: bool, name: &str) -> Result<Option<RgbImage>> {
    if !is_jpeg {
        return Ok(None);
    }
    // libjpeg reports a fatal error by unwinding out of its C code (mozjpeg's `unwinding`); not every
    // such path comes back as an `io::Error` (found by the `image` fuzz target: a corrupt JPEG ended
    // the process with exit code 101 and no message), so the whole decode is caught here.
    caught(name, "JPEG", || decode_jpeg(bytes, name))
}

/// Refuses a PNG whose `PLTE` chunk length is not a multiple of 3 (an error by the PNG specification).
/// The png crate (0.18.1, the newest) indexes past such a palette's end and panics when it expands it —
/// found by the `image` fuzz target — and a panic under libFuzzer ends the process even where
/// [`caught`] would have turned it into an error, so the input is refused before the decoder sees it.
/// Walks chunk headers only (length, type) up to the first `IDAT`; a truncated or malformed chunk
/// list is left to the decoder's own errors.
fn check_png_palette(bytes: &[u8], name: &str) -> Result<()> {
    const SIGNATURE_LEN: usize = 8;
    let mut at = SIGNATURE_LEN;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"IDAT" | b"IEND" => break,
            b"PLTE" if !len.is_multiple_of(3) => {
                return Err(Error::ImageDecode {
                    source_name: name.to_string(),
                    reason: format!("PNG: PLTE chunk length {len} is not a multiple of 3"),
                });
            }
            _ => {}
        }
        // Length, type, data, CRC.
        at = match at.checked_add(12).and_then(|a| a.checked_add(len)) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(())
}

/// Runs a third-party decoder, turning a panic inside it into [`Error::ImageDecode`] for `name`.
fn caught<T>(name: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("corrupt data");
        Err(Error::ImageDecode { source_name: name.to_string(), reason: format!("{what}: {reason}") })
    })
}

fn decode_jpeg(bytes: &[u8], name: &str) -> Result<Option<RgbImage>> {
    let jpeg_err =
        |e: std::io::Error| Error::ImageDecode { source_name: name.to_string(), reason: format!("JPEG: {e}") };
    let d = mozjpeg::Decompress::new_mem(bytes).map_err(jpeg_err)?;
    use mozjpeg::ColorSpace;
    if !matches!(d.color_space(), ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB) {
        return Ok(None);
    }
    let mut started = d.rgb().map_err(jpeg_err)?;
    let (w, h) = (started.width() as u32, started.height() as u32);
    let data = started.read_scanlines::<u8>().map_err(jpeg_err)?;
    started.finish().map_err(jpeg_err)?;
    RgbImage::from_raw(w, h, data)
        .map(Some)
        .ok_or_else(|| Error::ImageDecode { source_name: name.to_string(), reason: "JPEG: short pixel buffer".into() })
}

fn map_image_error(e: image::ImageError, name: &str, limits: &DecodeLimits) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::ImageLimit {
            source_name: name.to_string(),
            reason: l.to_string(),
            limit: format!(
                "{}x{} px, {} MiB decoder memory",
                limits.max_width,
                limits.max_height,
                limits.max_alloc >> 20
            ),
        },
        other => Error::ImageDecode { source_name: name.to_string(), reason: other.to_string() },
    }
}

/// PIL's `(a + 128 + ((a + 128) >> 8)) >> 8`: a/255 rounded, as in Pillow's Paste.c.
fn div255(a: u32) -> u8 {
    let t = a + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// Composite straight-alpha RGBA over white as `Image.paste(rgba, mask=alpha)` does.
fn over_white(rgba: impl Iterator<Item = [u8; 4]>, w: u32, h: u32) -> RgbImage {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for [r, g, b, a] in rgba {
        let (a, inv) = (a as u32, 255 - a as u32);
        for c in [r, g, b] {
            out.push(div255(255 * inv + c as u32 * a));
        }
    }
    // Length is exactly w·h·3 by construction.
    RgbImage::from_raw(w, h, out).unwrap_or_default()
}

fn gray_to_rgb(values: impl Iterator<Item = u8>, w: u32, h: u32) -> RgbImage {
    let out: Vec<u8> = values.flat_map(|v| [v, v, v]).collect();
    RgbImage::from_raw(w, h, out).unwrap_or_default()
}

/// Convert any decoded image to RGB the way the reference (PIL) does.
pub fn to_rgb(img: DynamicImage, name: &str) -> Result<RgbImage> {
    let (w, h) = (img.width(), img.height());
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => over_white(rgba.pixels().map(|p| p.0), w, h),
        DynamicImage::ImageLuma8(l) => gray_to_rgb(l.into_raw().into_iter(), w, h),
        // PIL "LA" → RGB drops alpha (only RGBA is composited by to_rgb).
        DynamicImage::ImageLumaA8(la) => gray_to_rgb(la.pixels().map(|p| p.0[0]), w, h),
        // PIL opens 16-bit grayscale as "I;16"; its conversion to RGB clips at 255.
        DynamicImage::ImageLuma16(l) => gray_to_rgb(l.into_raw().into_iter().map(|v| v.min(255) as u8), w, h),
        // 16-bit colour PNGs are read by PIL keeping the high byte of each sample.
        DynamicImage::ImageLumaA16(la) => gray_to_rgb(la.pixels().map(|p| (p.0[0] >> 8) as u8), w, h),
        DynamicImage::ImageRgb16(rgb) => {
            let out: Vec<u8> = rgb.into_raw().into_iter().map(|v| (v >> 8) as u8).collect();
            RgbImage::from_raw(w, h, out).unwrap_or_default()
        }
        DynamicImage::ImageRgba16(rgba) => over_white(rgba.pixels().map(|p| p.0.map(|v| (v >> 8) as u8)), w, h),
        other => {
            return Err(Error::ImageDecode {
                source_name: name.to_string(),
                reason: format!("unsupported pixel format {:?}", other.color()),
            });
        }
    })
}

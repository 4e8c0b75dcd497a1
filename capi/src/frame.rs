//! `StFrame`: one image encoded once (vision tower + the prompt prefix's KV), asked about many
//! times. Made from a file, from encoded bytes, or from a raw camera buffer.

use crate::engine::StEngine;
use crate::handle::{self, Handle};
use crate::status::{Error, Result, StStatus, guard, utf8, utf8_opt, write_out};
use st_core::engine::Frame;
use std::ffi::c_char;

/// An encoded frame. Immutable: any number of threads may ask about it at once (each with its own
/// engine clone).
pub struct StFrame {
    pub frame: Frame,
}

impl Handle for StFrame {
    const KIND: &'static str = "frame";
}

/// Byte order of a raw pixel buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StPixelFormat {
    Rgb8 = 0,
    Bgr8 = 1,
    Rgba8 = 2,
    Bgra8 = 3,
}

impl StPixelFormat {
    fn from_raw(v: u32) -> Result<Self> {
        Ok(match v {
            0 => Self::Rgb8,
            1 => Self::Bgr8,
            2 => Self::Rgba8,
            3 => Self::Bgra8,
            _ => return Err(Error::Invalid { name: "format", reason: format!("{v} is not an StPixelFormat") }),
        })
    }
    fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb8 | Self::Bgr8 => 3,
            Self::Rgba8 | Self::Bgra8 => 4,
        }
    }
    /// Where R, G and B sit within a pixel.
    fn rgb_offsets(self) -> [usize; 3] {
        match self {
            Self::Rgb8 | Self::Rgba8 => [0, 1, 2],
            Self::Bgr8 | Self::Bgra8 => [2, 1, 0],
        }
    }
}

/// What a frame holds, for display and bookkeeping.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StFrameInfo {
    /// The original image's size, the space of every box in an answer.
    pub width: u32,
    pub height: u32,
    /// The size the model saw (after smart resize).
    pub resized_width: u32,
    pub resized_height: u32,
    pub image_tokens: u64,
    pub prefix_tokens: u64,
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefix_prefill_ms: f64,
}

fn finish(
    engine: *const StEngine,
    out: *mut *mut StFrame,
    encode: impl FnOnce(&StEngine) -> Result<Frame>,
) -> StStatus {
    guard(|| {
        let e = unsafe { handle::get(engine, "engine") }?;
        if out.is_null() {
            return Err(Error::Null { name: "out" });
        }
        let frame = encode(e)?;
        unsafe { write_out(out, "out", handle::into_raw(StFrame { frame })) }
    })
}

/// Decode and encode the image file at `path` (PNG, JPEG, WebP, BMP, GIF, TIFF).
///
/// # Safety
/// `engine` is NULL or a pointer st returned; `path` is NULL or NUL-terminated; `out` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_frame_from_file(
    engine: *const StEngine,
    path: *const c_char,
    out: *mut *mut StFrame,
) -> StStatus {
    finish(engine, out, |e| {
        let path = unsafe { utf8(path, "path") }?;
        Ok(e.lock().encode_image(path.as_ref())?)
    })
}

/// Decode and encode an image held in memory (`len` bytes of a PNG, JPEG, … file); `name` (NULL:
/// "bytes") names it in errors.
///
/// # Safety
/// `data` is NULL or readable for `len` bytes; `name` is NULL or NUL-terminated; `out` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_frame_from_bytes(
    engine: *const StEngine,
    data: *const u8,
    len: usize,
    name: *const c_char,
    out: *mut *mut StFrame,
) -> StStatus {
    finish(engine, out, |e| {
        if data.is_null() {
            return Err(Error::Null { name: "data" });
        }
        let name = unsafe { utf8_opt(name, "name") }?.unwrap_or("bytes");
        // SAFETY: readable for len bytes by contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        Ok(e.lock().encode_bytes(bytes, name)?)
    })
}

/// Encode a raw pixel buffer, as a camera driver hands it over: `height` rows of `stride` bytes,
/// each starting with `width` pixels in `format` (alpha is ignored). The pixels are read once,
/// into the preprocessor's RGB image.
///
/// # Safety
/// `data` is NULL or readable for `stride * (height - 1) + width * bytes per pixel` bytes; `out` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_frame_from_pixels(
    engine: *const StEngine,
    data: *const u8,
    width: u32,
    height: u32,
    stride: usize,
    format: u32,
    out: *mut *mut StFrame,
) -> StStatus {
    finish(engine, out, |e| {
        if data.is_null() {
            return Err(Error::Null { name: "data" });
        }
        let format = StPixelFormat::from_raw(format)?;
        if width == 0 || height == 0 {
            return Err(Error::Invalid { name: "width", reason: format!("{width}x{height} holds no pixel") });
        }
        let limits = e.lock().preprocessor.options.limits;
        if width > limits.max_width || height > limits.max_height {
            return Err(Error::Invalid {
                name: "width",
                reason: format!(
                    "{width}x{height} is above the preprocess limit of {}x{}",
                    limits.max_width, limits.max_height
                ),
            });
        }
        let bpp = format.bytes_per_pixel();
        let row = (width as usize).checked_mul(bpp);
        let len = row.and_then(|r| stride.checked_mul(height as usize - 1)?.checked_add(r));
        let (Some(row), Some(len)) = (row, len) else {
            return Err(Error::Invalid { name: "stride", reason: "the buffer's size overflows".into() });
        };
        if stride < row {
            return Err(Error::Invalid {
                name: "stride",
                reason: format!("{stride} bytes is less than a row of {width} pixels ({row} bytes)"),
            });
        }
        // SAFETY: readable for len bytes by contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        let [r, g, b] = format.rgb_offsets();
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height as usize {
            for px in bytes[y * stride..y * stride + row].chunks_exact(bpp) {
                rgb.extend_from_slice(&[px[r], px[g], px[b]]);
            }
        }
        let image = image::RgbImage::from_raw(width, height, rgb)
            .ok_or_else(|| Error::Invalid { name: "width", reason: "size does not match the pixels".into() })?;
        Ok(e.lock().encode_rgb(&image, "pixels")?)
    })
}

/// Fill `*info` with the frame's sizes and costs.
///
/// # Safety
/// `frame` is NULL or a pointer st returned; `info` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_frame_info(frame: *const StFrame, info: *mut StFrameInfo) -> StStatus {
    guard(|| {
        let f = &unsafe { handle::get(frame, "frame") }?.frame;
        let t = &f.timings;
        let image = &f.image;
        let value = StFrameInfo {
            width: image.original_size.0,
            height: image.original_size.1,
            resized_width: image.resized_size.0,
            resized_height: image.resized_size.1,
            image_tokens: f.embeds.nrows() as u64,
            prefix_tokens: t.prefix_tokens as u64,
            preprocess_ms: t.preprocess_ms,
            vision_ms: t.vision_ms,
            prefix_prefill_ms: t.prefix_prefill_ms,
        };
        unsafe { write_out(info, "info", value) }
    })
}

/// Free a frame. NULL is a no-op; a pointer that is not a live frame is left alone
/// (ST_STATUS_INVALID_HANDLE).
///
/// # Safety
/// No other call may be using `frame`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_frame_free(frame: *mut StFrame) -> StStatus {
    guard(|| unsafe { handle::free(frame, "frame") })
}

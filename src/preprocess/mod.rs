//! Image → `pixel_values` exactly as SpatialThinker's evaluation prepared it (qwen-vl-utils
//! `fetch_image`, then the HF Qwen2-VL image processor):
//! [`decode`] under limits → RGB as PIL's `to_rgb` → [`resize`] (smart_resize, Pillow bicubic)
//! → [`patchify()`] (×1/255, normalise, 2×14×14 patches in merge-window order).

pub mod decode;
pub mod patchify;
pub mod resize;

pub use decode::{DecodeLimits, decode_bytes, decode_file, to_rgb};
pub use patchify::{ImageNorm, patchify};
pub use resize::{PixelBounds, resize_bicubic, smart_resize};

use crate::error::Result;
use image::RgbImage;
use std::path::Path;

/// Geometry a preprocessor reads from the checkpoint (`vision_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
}

impl PatchGeometry {
    pub fn from_vision(v: &st_checkpoint::VisionConfig) -> Self {
        Self { patch_size: v.patch_size, temporal_patch_size: v.temporal_patch_size, merge_size: v.spatial_merge_size }
    }
    /// Side granularity in pixels (28 for Qwen2.5-VL).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// Every preprocessing knob. Defaults are the reference's.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    pub pixels: PixelBounds,
    pub limits: DecodeLimits,
    /// Rotate by the EXIF orientation tag. Off by default: the reference does not.
    pub apply_exif_orientation: bool,
    pub norm: ImageNorm,
}

impl PreprocessOptions {
    pub fn for_geometry(g: &PatchGeometry) -> Self {
        Self {
            pixels: PixelBounds::default_for_factor(g.factor()),
            limits: DecodeLimits::default(),
            apply_exif_orientation: false,
            norm: ImageNorm::CLIP,
        }
    }
}

/// A preprocessed image: what the vision encoder takes, plus the sizes the prompt needs.
#[derive(Debug, Clone)]
pub struct PreprocessedImage {
    /// Original size (after optional EXIF rotation), as stated in the prompt.
    pub original_size: (u32, u32),
    /// Size after smart_resize (width, height).
    pub resized_size: (u32, u32),
    /// `[grid_t * grid_h * grid_w, C * T * P * P]`, row-major.
    pub pixel_values: ndarray::Array2<f32>,
    /// `[grid_t, grid_h, grid_w]` in patches.
    pub grid_thw: [usize; 3],
}

impl PreprocessedImage {
    /// `<|image_pad|>` tokens this image occupies in the prompt.
    pub fn num_image_tokens(&self, merge_size: usize) -> usize {
        self.grid_thw.iter().product::<usize>() / (merge_size * merge_size)
    }
}

/// Decodes, resizes and patchifies images for one model geometry.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub geometry: PatchGeometry,
    pub options: PreprocessOptions,
}

impl Preprocessor {
    pub fn new(geometry: PatchGeometry, options: PreprocessOptions) -> Self {
        Self { geometry, options }
    }

    pub fn from_vision_config(v: &st_checkpoint::VisionConfig) -> Self {
        let g = PatchGeometry::from_vision(v);
        Self::new(g, PreprocessOptions::for_geometry(&g))
    }

    /// Geometry from `config.json`, pixel bounds and normalisation from the checkpoint's
    /// preprocessor config.
    pub fn from_checkpoint(ckpt: &st_checkpoint::Checkpoint) -> Self {
        let g = PatchGeometry::from_vision(&ckpt.config.vision);
        let ip = &ckpt.image_processor;
        let mut options = PreprocessOptions::for_geometry(&g);
        options.pixels = PixelBounds { min_pixels: ip.min_pixels, max_pixels: ip.max_pixels };
        options.norm = ImageNorm { mean: ip.image_mean, std: ip.image_std };
        Self::new(g, options)
    }

    /// Decode an image file and preprocess it.
    pub fn load(&self, path: &Path) -> Result<PreprocessedImage> {
        let rgb = decode_file(path, &self.options.limits, self.options.apply_exif_orientation)?;
        self.process_rgb(&rgb, &path.display().to_string())
    }

    /// Decode an encoded image held in memory (e.g. a camera frame as JPEG).
    pub fn load_bytes(&self, bytes: &[u8], source_name: &str) -> Result<PreprocessedImage> {
        let rgb = decode_bytes(bytes, source_name, &self.options.limits, self.options.apply_exif_orientation)?;
        self.process_rgb(&rgb, source_name)
    }

    /// Preprocess an already decoded RGB image.
    pub fn process_rgb(&self, rgb: &RgbImage, source_name: &str) -> Result<PreprocessedImage> {
        let (w, h) = rgb.dimensions();
        let (rh, rw) = smart_resize(h, w, self.geometry.factor(), &self.options.pixels, source_name)?;
        let resized = resize_bicubic(rgb, rw, rh)?;
        let (pixel_values, grid_thw) = patchify(&resized, &self.geometry, &self.options.norm)?;
        Ok(PreprocessedImage { original_size: (w, h), resized_size: (rw, rh), pixel_values, grid_thw })
    }
}

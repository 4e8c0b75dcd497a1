//! Everything the runtime computes before the first model call, for one image and question,
//! and a writer that saves it as `.npy` files for comparison with Python (`st inspect`).

use crate::error::{Error, Result};
use crate::preprocess::{PixelBounds, PreprocessedImage, Preprocessor};
use crate::prompt::{Content, INSTRUCTION, Message, PromptBuilder, spatialthinker_text};
use crate::rope::{MropePositions, mrope_positions};
use ndarray::{Array2, Array3};
use std::path::{Path, PathBuf};

/// The model inputs for one image and question.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub image: PreprocessedImage,
    pub prompt_text: String,
    pub input_ids: Vec<u32>,
    pub positions: MropePositions,
    pub image_token_count: usize,
}

/// Overrides of the checkpoint's pixel bounds.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelOverrides {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

/// Preprocess `image`, build the SpatialThinker prompt for `question` (the instruction alone when
/// `None`), tokenize it and compute M-RoPE positions, using the checkpoint in `model_dir`.
pub fn inspect(model_dir: &Path, image: &Path, question: Option<&str>, pixels: PixelOverrides) -> Result<Inspection> {
    let ckpt = st_checkpoint::Checkpoint::open(model_dir)?;
    let mut pre = Preprocessor::from_checkpoint(&ckpt);
    let d = pre.options.pixels;
    pre.options.pixels = PixelBounds {
        min_pixels: pixels.min_pixels.unwrap_or(d.min_pixels),
        max_pixels: pixels.max_pixels.unwrap_or(d.max_pixels),
    };
    let prompt = PromptBuilder::from_dir(model_dir)?;
    let img = pre.load(image)?;
    let (w, h) = img.original_size;
    let text = match question {
        Some(q) => spatialthinker_text(w, h, q)?,
        None => format!("{INSTRUCTION}\n\nImage size: {w} x {h}"),
    };
    let prompt_text = prompt.template.render(&[Message::user(vec![Content::Image, Content::Text(text)])], true)?;
    let merge = pre.geometry.merge_size;
    let n_img = img.num_image_tokens(merge);
    let input_ids = prompt.encode(&prompt_text, &[n_img])?;
    let positions = mrope_positions(&input_ids, prompt.tokenizer.special.image_pad, &[img.grid_thw], merge)?;
    Ok(Inspection { image: img, prompt_text, input_ids, positions, image_token_count: n_img })
}

fn write_npy<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(
    dir: &Path,
    name: &str,
    array: &ndarray::ArrayRef<A, D>,
) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    ndarray_npy::write_npy(&tmp, array)
        .map_err(|e| Error::Io { path: tmp.clone(), source: std::io::Error::other(e) })?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    Ok(path)
}

impl Inspection {
    /// Write `pixel_values.npy` (f32), `image_grid_thw.npy`, `input_ids.npy`,
    /// `position_ids.npy` ([3, 1, seq]) and `rope_deltas.npy` (i64, [1, 1]) into `dir`, each
    /// through a temporary file renamed into place.
    pub fn write_npy_dir(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let [t, h, w] = self.image.grid_thw;
        let seq = self.input_ids.len();
        let grid = Array2::from_shape_vec((1, 3), vec![t as i64, h as i64, w as i64]).map_err(shape_err)?;
        let ids =
            Array2::from_shape_vec((1, seq), self.input_ids.iter().map(|&x| x as i64).collect()).map_err(shape_err)?;
        let pos: Array3<i64> = self.positions.ids.clone().into_shape_with_order((3, 1, seq)).map_err(shape_err)?;
        let deltas = Array2::from_elem((1, 1), self.positions.delta);
        Ok(vec![
            write_npy(dir, "pixel_values.npy", &self.image.pixel_values)?,
            write_npy(dir, "image_grid_thw.npy", &grid)?,
            write_npy(dir, "input_ids.npy", &ids)?,
            write_npy(dir, "position_ids.npy", &pos)?,
            write_npy(dir, "rope_deltas.npy", &deltas)?,
        ])
    }
}

fn shape_err(e: ndarray::ShapeError) -> Error {
    Error::InvalidArgument { name: "array shape", reason: e.to_string() }
}

//! The engine: an exported model plus the preprocessing and prompt of its checkpoint.
//! `encode_image` runs the vision tower once per frame; `generate` answers a question about a
//! frame. Greedy decoding, one token per step, KV cache carried between steps (the sampling
//! chain, frame KV reuse and IoBinding come with the runtime issue).

use super::model::{ExportedModel, SessionOptions};
use crate::error::{Error, Result};
use crate::preprocess::{ImageNorm, PatchGeometry, PixelBounds, PreprocessOptions, PreprocessedImage, Preprocessor};
use crate::prompt::{PromptBuilder, spatialthinker_text};
use ndarray::{Array1, Array2, Array3, Array4, Axis, s};
use ort::value::Tensor;
use std::path::Path;

/// One camera frame, encoded once.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: PreprocessedImage,
    /// Vision tower output, [image tokens, hidden], raster order.
    pub embeds: Array2<f32>,
}

/// What `generate` produced.
#[derive(Debug, Clone)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
}

pub struct Engine {
    pub model: ExportedModel,
    pub preprocessor: Preprocessor,
    pub prompt: PromptBuilder,
}

type Cache = Vec<(Array4<f32>, Array4<f32>)>;

fn ort_err(context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Ort { context: context.to_string(), reason: e.to_string() }
}

impl Engine {
    /// Load an exported model directory.
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let model = ExportedModel::load(dir, opts)?;
        let m = &model.manifest;
        let geometry = PatchGeometry::from_vision(&m.config.vision);
        let mut options = PreprocessOptions::for_geometry(&geometry);
        let ip = &m.image_processor;
        options.pixels = PixelBounds { min_pixels: ip.min_pixels, max_pixels: ip.max_pixels };
        options.norm = ImageNorm { mean: ip.image_mean, std: ip.image_std };
        let prompt = PromptBuilder::from_dir(dir)?;
        Ok(Self { preprocessor: Preprocessor::new(geometry, options), prompt, model })
    }

    /// Preprocess an image file and run the vision tower on it.
    pub fn encode_image(&mut self, path: &Path) -> Result<Frame> {
        let image = self.preprocessor.load(path)?;
        self.encode(image)
    }

    /// Run the vision tower on a preprocessed image.
    pub fn encode(&mut self, image: PreprocessedImage) -> Result<Frame> {
        let vi = crate::vision::vision_inputs(image.grid_thw, &self.model.manifest.config.vision)?;
        let ctx = "vision graph";
        let out = self
            .model
            .vision
            .run(ort::inputs![
                "pixel_values" => Tensor::from_array(image.pixel_values.clone()).map_err(ort_err(ctx))?,
                "patch_index" => Tensor::from_array(Array1::from(vi.patch_index)).map_err(ort_err(ctx))?,
                "rope_cos" => Tensor::from_array(vi.rope_cos).map_err(ort_err(ctx))?,
                "rope_sin" => Tensor::from_array(vi.rope_sin).map_err(ort_err(ctx))?,
                "window_bias" => Tensor::from_array(vi.window_bias).map_err(ort_err(ctx))?,
                "full_bias" => Tensor::from_array(vi.full_bias).map_err(ort_err(ctx))?,
                "merge_index" => Tensor::from_array(Array1::from(vi.merge_index)).map_err(ort_err(ctx))?,
            ])
            .map_err(ort_err(ctx))?;
        let embeds = out["image_embeds"].try_extract_array::<f32>().map_err(ort_err(ctx))?;
        let embeds =
            embeds.into_dimensionality().map_err(|e| Error::Ort { context: ctx.into(), reason: e.to_string() })?;
        Ok(Frame { embeds: embeds.to_owned(), image })
    }

    fn embed(&mut self, ids: &[u32]) -> Result<Array3<f32>> {
        let ctx = "embed graph";
        let ids = Array2::from_shape_vec((1, ids.len()), ids.iter().map(|&x| x as i64).collect())
            .map_err(|e| Error::Ort { context: ctx.into(), reason: e.to_string() })?;
        let out = self
            .model
            .embed
            .run(ort::inputs!["input_ids" => Tensor::from_array(ids).map_err(ort_err(ctx))?])
            .map_err(ort_err(ctx))?;
        let e = out["inputs_embeds"].try_extract_array::<f32>().map_err(ort_err(ctx))?;
        e.to_owned().into_dimensionality().map_err(|e| Error::Ort { context: ctx.into(), reason: e.to_string() })
    }

    /// One decoder call over `embeds` at `positions` ([3, s]) after `past` cached tokens; returns
    /// the last position's logits and updates `cache`.
    fn step(
        &mut self,
        embeds: Array3<f32>,
        positions: Array2<i64>,
        past: usize,
        cache: &mut Cache,
    ) -> Result<Array1<f32>> {
        let ctx = "decoder graph";
        let t = &self.model.manifest.config.text;
        let seq = embeds.dim().1;
        let total = past + seq;
        let (cos, sin) = crate::rope::mrope_cos_sin(positions.view(), t.head_dim, t.rope_theta, &t.mrope_section)?;
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            ("inputs_embeds".into(), Tensor::from_array(embeds).map_err(ort_err(ctx))?.into()),
            ("rope_cos".into(), Tensor::from_array(cos.insert_axis(Axis(0))).map_err(ort_err(ctx))?.into()),
            ("rope_sin".into(), Tensor::from_array(sin.insert_axis(Axis(0))).map_err(ort_err(ctx))?.into()),
            ("logits_to_keep".into(), Tensor::from_array(Array1::from(vec![1i64])).map_err(ort_err(ctx))?.into()),
        ];
        if self.model.decoder_uses_gqa {
            let last = Array1::from(vec![total as i32 - 1]);
            inputs.push(("seqlens_k".into(), Tensor::from_array(last).map_err(ort_err(ctx))?.into()));
            let total = ndarray::arr0(total as i32);
            inputs.push(("total_sequence_length".into(), Tensor::from_array(total).map_err(ort_err(ctx))?.into()));
        } else {
            // Causal by token index (not by M-RoPE position).
            let bias =
                Array4::from_shape_fn((1, 1, seq, total), |(_, _, i, j)| if j > past + i { f32::MIN } else { 0.0 });
            inputs.push(("attention_bias".into(), Tensor::from_array(bias).map_err(ort_err(ctx))?.into()));
        }
        for (i, (k, v)) in cache.iter().enumerate() {
            inputs.push((format!("past_key.{i}"), Tensor::from_array(k.clone()).map_err(ort_err(ctx))?.into()));
            inputs.push((format!("past_value.{i}"), Tensor::from_array(v.clone()).map_err(ort_err(ctx))?.into()));
        }
        let out = self.model.decoder.run(inputs).map_err(ort_err(ctx))?;
        let shape_err = |e: ndarray::ShapeError| Error::Ort { context: ctx.into(), reason: e.to_string() };
        for (i, slot) in cache.iter_mut().enumerate() {
            let k = out[format!("present_key.{i}")].try_extract_array::<f32>().map_err(ort_err(ctx))?;
            let v = out[format!("present_value.{i}")].try_extract_array::<f32>().map_err(ort_err(ctx))?;
            *slot = (
                k.to_owned().into_dimensionality().map_err(shape_err)?,
                v.to_owned().into_dimensionality().map_err(shape_err)?,
            );
        }
        let logits = out["logits"].try_extract_array::<f32>().map_err(ort_err(ctx))?;
        let last = logits.index_axis(Axis(0), 0);
        let last = last.index_axis(Axis(0), last.shape()[0].saturating_sub(1));
        last.to_owned().into_dimensionality().map_err(shape_err)
    }

    /// Answer `question` about `frame` greedily, up to `max_new_tokens`, stopping at an
    /// end-of-sequence id of the generation config or `<|im_end|>`.
    pub fn generate(&mut self, frame: &Frame, question: &str, max_new_tokens: usize) -> Result<Generation> {
        let (w, h) = frame.image.original_size;
        let text = self.prompt.template.render(
            &[crate::prompt::Message::user(vec![
                crate::prompt::Content::Image,
                crate::prompt::Content::Text(spatialthinker_text(w, h, question)?),
            ])],
            true,
        )?;
        let merge = self.preprocessor.geometry.merge_size;
        let ids = self.prompt.encode(&text, &[frame.image.num_image_tokens(merge)])?;
        let limit = self.model.manifest.config.text.max_position_embeddings;
        if ids.len() + max_new_tokens > limit {
            return Err(Error::InvalidArgument {
                name: "max_new_tokens",
                reason: format!("{} prompt tokens + {max_new_tokens} new exceed the context of {limit}", ids.len()),
            });
        }
        let special = self.prompt.tokenizer.special;
        let pos = crate::rope::mrope_positions(&ids, special.image_pad, &[frame.image.grid_thw], merge)?;
        let mut embeds = self.embed(&ids)?;
        let mut row = 0;
        for (i, &id) in ids.iter().enumerate() {
            if id == special.image_pad {
                let src = frame.embeds.row(row);
                embeds.slice_mut(s![0, i, ..]).assign(&src);
                row += 1;
            }
        }
        let t = &self.model.manifest.config.text;
        let empty = Array4::<f32>::zeros((1, t.num_key_value_heads, 0, t.head_dim));
        let mut cache: Cache = vec![(empty.clone(), empty); t.num_hidden_layers];
        let mut stops = self.model.manifest.generation.eos_token_ids.clone();
        stops.push(special.im_end);
        let mut logits = self.step(embeds, pos.ids.clone(), 0, &mut cache)?;
        let mut out = Vec::new();
        while out.len() < max_new_tokens {
            let next =
                logits.iter().enumerate().fold((0usize, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
                    as u32;
            out.push(next);
            if stops.contains(&next) || out.len() == max_new_tokens {
                break;
            }
            let index = ids.len() + out.len() - 1;
            let p = pos.position_after_prompt(index);
            let e = self.embed(&[next])?;
            logits = self.step(e, Array2::from_elem((3, 1), p), index, &mut cache)?;
        }
        let text = self.prompt.tokenizer.decode(&out, true)?;
        Ok(Generation { token_ids: out, text, prompt_tokens: ids.len() })
    }
}

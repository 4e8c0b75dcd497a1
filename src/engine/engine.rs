//! The engine: an exported model plus the preprocessing and prompt of its checkpoint.
//!
//! [`Engine::encode_image`] runs the vision tower once per camera frame and prefills the
//! question-independent prompt prefix (system turn, image, instruction, image size); the
//! [`Frame`] keeps that prefix's KV. [`Engine::ask`] then pays only for the question's own
//! tokens: it reuses the frame's prefix as far as it matches the new prompt token for token,
//! prefills the rest, and decodes through the sampling chain.

use super::decoder::{DecoderState, KvSnapshot};
use super::model::{ExportedModel, HugePages, SessionOptions};
use crate::decode::grammar::{Bounds, GrammarFactory, OutputSpec};
use crate::decode::{Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::preprocess::{ImageNorm, PatchGeometry, PixelBounds, PreprocessOptions, PreprocessedImage, Preprocessor};
use crate::prompt::{Content, MAX_QUESTION_BYTES, Message, PromptBuilder};
use crate::scene::{Response, Rules, parse_response};
use image::RgbImage;
use ndarray::{Array1, Array2, Array3, s};
use ort::value::Tensor;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

static NEXT_FRAME: AtomicU64 = AtomicU64::new(1);

/// Milliseconds since `t`.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// What encoding a frame cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameTimings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    /// Prefill of the question-independent prompt prefix.
    pub prefix_prefill_ms: f64,
    pub prefix_tokens: usize,
}

/// One camera frame, encoded once; cheap to clone.
#[derive(Debug, Clone)]
pub struct Frame {
    id: u64,
    pub image: Arc<PreprocessedImage>,
    /// Vision tower output, `[image tokens, hidden]`, raster order.
    pub embeds: Arc<Array2<f32>>,
    prefix_ids: Arc<Vec<u32>>,
    prefix_kv: Arc<KvSnapshot>,
    pub timings: FrameTimings,
}

impl Frame {
    /// Host memory the frame's prefix KV holds.
    pub fn prefix_kv_bytes(&self) -> usize {
        self.prefix_kv.bytes()
    }
}

/// Most text bytes a [`Engine::chat_streaming`] conversation may hold (four questions' worth; the
/// context limit is enforced later in tokens).
pub const MAX_MESSAGES_BYTES: usize = 4 * MAX_QUESTION_BYTES;

/// The new-token budget when none is given: SpatialThinker's evaluation setting.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

/// The new-token budget of a generation after `prompt` tokens in a context of `context`: the
/// explicit `requested` one if it fits (an error naming the figures if not), else what the context
/// leaves, at most [`DEFAULT_MAX_NEW_TOKENS`].
pub fn new_token_budget(requested: Option<usize>, prompt: usize, context: usize) -> Result<usize> {
    let room = context.saturating_sub(prompt);
    match requested {
        Some(0) => Err(Error::InvalidArgument { name: "max_new_tokens", reason: "must be at least 1".into() }),
        Some(n) if prompt + n > context => Err(Error::InvalidArgument {
            name: "max_new_tokens",
            reason: format!("{prompt} prompt tokens + {n} new exceed the model's context of {context}"),
        }),
        Some(n) => Ok(n),
        None if room == 0 => Err(Error::InvalidArgument {
            name: "question",
            reason: format!("the prompt's {prompt} tokens leave no room in the model's context of {context}"),
        }),
        None => {
            if room < DEFAULT_MAX_NEW_TOKENS {
                tracing::debug!(
                    "new-token budget {room}: what the context of {context} leaves after {prompt} prompt tokens"
                );
            }
            Ok(room.min(DEFAULT_MAX_NEW_TOKENS))
        }
    }
}

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// At most this many new tokens; `None`: as many as the context leaves after the prompt, at most
    /// [`DEFAULT_MAX_NEW_TOKENS`]. An explicit value the context cannot hold is an error.
    pub max_new_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Reuse the frame's prefix KV (off: prefill the whole prompt, for comparison).
    pub reuse_prefix: bool,
    /// Keep generating through end-of-turn tokens up to `max_new_tokens` (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Constrain the output to a valid response (docs/FORMATS.md#the-response) by construction (`--no-grammar` off).
    pub grammar: bool,
    /// Token budgets of the free-text sections and sizes of the scene under the grammar (each
    /// free-text budget is also capped at a quarter of `max_new_tokens`).
    pub bounds: Bounds,
    /// Exact speculation: up to this many prompt-lookup draft tokens ride in each decoder pass
    /// (0: off). The sampler still picks every token from the model's own logits, position by
    /// position, and a draft is kept only as far as it agrees, so the output is the same as
    /// without it (up to the float differences of a multi-token pass); what changes is how many
    /// tokens one pass over the weights yields.
    #[serde(default)]
    pub speculate: usize,
}

impl Default for GenerateOptions {
    /// SpatialThinker's evaluation settings: greedy, up to 2048 new tokens (fewer where the context
    /// leaves less).
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            sampling: SamplingParams::default(),
            reuse_prefix: true,
            ignore_eos: false,
            grammar: true,
            bounds: Bounds::default(),
            speculate: 0,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence id or `<|im_end|>`.
    EndOfTurn,
    MaxNewTokens,
    /// The streaming callback asked to stop.
    Callback,
}

/// Where the time of one question went (the frame's own costs are in [`FrameTimings`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefix_prefill_ms: f64,
    /// Prefill of this question's tokens after the reused prefix.
    pub prefill_ms: f64,
    /// Each decoder pass after the first token (a pass may take several forced tokens).
    pub decode_ms: Vec<f64>,
    /// Tokens those passes produced.
    pub decode_tokens: usize,
    /// Speculated draft tokens fed to the decoder, and how many of them the sampler kept.
    #[serde(default)]
    pub draft_tokens: usize,
    #[serde(default)]
    pub accepted_draft_tokens: usize,
}

impl Timings {
    /// Tokens per second of the decoder passes after the first token.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let total: f64 = self.decode_ms.iter().sum();
        if total > 0.0 { self.decode_tokens as f64 * 1e3 / total } else { 0.0 }
    }
}

/// A streamed token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent<'a> {
    pub index: usize,
    pub id: u32,
    /// The text this token completes (empty while a multi-byte character is incomplete).
    pub text: &'a str,
}

/// The typed result of one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// observe / scene / think / answer, `valid` and `reasons`.
    #[serde(flatten)]
    pub response: Response,
    /// The generated text (special tokens removed).
    pub raw: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the frame instead of being prefilled.
    pub reused_prompt_tokens: usize,
    pub stop: StopReason,
    pub timings: Timings,
}

impl Answer {
    /// The answer as `st-run --json` prints it: the answer's own fields plus the frame's image sizes
    /// (`image.original_size`, `image.resized_size`) and the model (`model.dir`, `model.device`).
    pub fn to_json(&self, frame: &Frame, model: &ExportedModel) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["image"] = serde_json::json!({
            "original_size": frame.image.original_size, "resized_size": frame.image.resized_size,
        });
        v["model"] = serde_json::json!({"dir": model.dir, "device": model.device.to_string()});
        v
    }
}

pub struct Engine {
    model: Arc<ExportedModel>,
    pub preprocessor: Preprocessor,
    pub prompt: PromptBuilder,
    state: DecoderState,
    /// The frame whose prefix fills the cache's first positions, and how many are still valid.
    resident: Option<(u64, usize)>,
    /// The token trie for constrained decoding, built at first use and shared by clones.
    grammar: Arc<OnceLock<GrammarFactory>>,
}

impl Clone for Engine {
    /// Another engine over the same loaded sessions (no weights copied), with its own KV cache.
    /// Clones may run on different threads; each graph runs one call at a time.
    fn clone(&self) -> Self {
        Self {
            model: Arc::clone(&self.model),
            preprocessor: self.preprocessor.clone(),
            prompt: self.prompt.clone(),
            state: DecoderState::new(&self.model),
            resident: None,
            grammar: Arc::clone(&self.grammar),
        }
    }
}

fn ort_err(context: &'static str) -> impl Fn(ort::Error) -> Error {
    move |e| Error::Ort { context: context.to_string(), reason: e.to_string() }
}

fn shape_err(context: &'static str) -> impl Fn(ndarray::ShapeError) -> Error {
    move |e| Error::Ort { context: context.to_string(), reason: e.to_string() }
}

/// Length of the common prefix of two token sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine {
    /// Open `model`: an `st export` directory, or a Hugging Face checkpoint, exported (fp32)
    /// once into [`cache::cache_dir`](super::cache::cache_dir) and reused.
    pub fn open(model: &Path, opts: &SessionOptions) -> Result<Self> {
        Self::load(&super::cache::exported_model(model)?, opts)
    }

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
        let state = DecoderState::new(&model);
        let engine = Self {
            preprocessor: Preprocessor::new(geometry, options),
            prompt,
            state,
            resident: None,
            grammar: Arc::default(),
            model: model.into(),
        };
        if engine.model.widens_vision_per_call(opts) {
            engine.warm_up_vision()?;
        }
        if opts.huge_pages == HugePages::On {
            let t0 = std::time::Instant::now();
            let done = super::huge_pages::back_with_huge_pages(super::huge_pages::MIN_BYTES);
            tracing::debug!("huge pages: {done:?} in {:.2} s", t0.elapsed().as_secs_f64());
        }
        Ok(engine)
    }

    /// Encodes the smallest image once, discarding it. Where the vision tower's fp16 weights are kept as
    /// exported, the first frame would otherwise fault every weight in from the mapped file and grow ORT's
    /// arena for each widened weight (~1 s for the 7B's tower on the CPU); widening at load
    /// ([`VisionWeights::Widened`](super::model::VisionWeights)) pays the same at load.
    fn warm_up_vision(&self) -> Result<()> {
        let side = self.preprocessor.geometry.factor() as u32;
        let image = self.preprocessor.process_rgb(&RgbImage::new(side, side), "the vision warm-up image")?;
        self.vision(&image).map(drop)
    }

    pub fn model(&self) -> &ExportedModel {
        &self.model
    }

    /// Preprocess an image file and encode it as a frame.
    pub fn encode_image(&mut self, path: &Path) -> Result<Frame> {
        let t = Instant::now();
        let image = self.preprocessor.load(path)?;
        self.encode(image, ms(t))
    }

    /// Decode an encoded image held in memory (PNG, JPEG, … bytes) and encode it as a frame;
    /// `source_name` names it in errors.
    pub fn encode_bytes(&mut self, bytes: &[u8], source_name: &str) -> Result<Frame> {
        let t = Instant::now();
        let image = self.preprocessor.load_bytes(bytes, source_name)?;
        self.encode(image, ms(t))
    }

    /// Encode a decoded RGB image (a camera frame) as a frame.
    pub fn encode_rgb(&mut self, rgb: &RgbImage, source_name: &str) -> Result<Frame> {
        let t = Instant::now();
        let image = self.preprocessor.process_rgb(rgb, source_name)?;
        self.encode(image, ms(t))
    }

    /// Run the vision tower on a preprocessed image and prefill the frame's prompt prefix.
    pub fn encode(&mut self, image: PreprocessedImage, preprocess_ms: f64) -> Result<Frame> {
        let t = Instant::now();
        let embeds = self.vision(&image)?;
        let vision_ms = ms(t);
        let t = Instant::now();
        let (w, h) = image.original_size;
        let merge = self.preprocessor.geometry.merge_size;
        let ids = self.prompt.frame_prefix(w, h, image.num_image_tokens(merge))?;
        self.resident = None;
        self.state.truncate(0);
        let pos =
            crate::rope::mrope_positions(&ids, self.prompt.tokenizer.special.image_pad, &[image.grid_thw], merge)?;
        let inputs = self.prompt_embeds(&ids, 0, &embeds)?;
        self.state.reserve(&self.model, ids.len())?;
        self.state.forward(&self.model, inputs, pos.ids, 1)?;
        let kv = self.state.snapshot(ids.len())?;
        let id = NEXT_FRAME.fetch_add(1, Ordering::Relaxed);
        self.resident = Some((id, ids.len()));
        let timings = FrameTimings { preprocess_ms, vision_ms, prefix_prefill_ms: ms(t), prefix_tokens: ids.len() };
        Ok(Frame {
            id,
            image: image.into(),
            embeds: embeds.into(),
            prefix_ids: ids.into(),
            prefix_kv: kv.into(),
            timings,
        })
    }

    /// The vision tower's output for a preprocessed image, `[image tokens, hidden]` in raster
    /// order (what the decoder puts at the `<|image_pad|>` positions; the trainer caches it).
    pub fn image_embeds(&self, image: &PreprocessedImage) -> Result<Array2<f32>> {
        self.vision(image)
    }

    fn vision(&self, image: &PreprocessedImage) -> Result<Array2<f32>> {
        let vi = crate::vision::vision_inputs(image.grid_thw, &self.model.manifest.config.vision)?;
        let ctx = "vision graph";
        let mut session = self.model.vision.lock()?;
        let out = session
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
        embeds.to_owned().into_dimensionality().map_err(shape_err(ctx))
    }

    /// Token embeddings `[1, n, hidden]` from the embed graph.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Array3<f32>> {
        let ctx = "embed graph";
        let ids = Array2::from_shape_vec((1, ids.len()), ids.iter().map(|&x| i64::from(x)).collect())
            .map_err(shape_err(ctx))?;
        let mut session = self.model.embed.lock()?;
        let out = session
            .run(ort::inputs!["input_ids" => Tensor::from_array(ids).map_err(ort_err(ctx))?])
            .map_err(ort_err(ctx))?;
        let e = out["inputs_embeds"].try_extract_array::<f32>().map_err(ort_err(ctx))?;
        e.to_owned().into_dimensionality().map_err(shape_err(ctx))
    }

    /// Embeddings of `ids[from..]`, with the image's rows at its `<|image_pad|>` positions.
    fn prompt_embeds(&self, ids: &[u32], from: usize, image: &Array2<f32>) -> Result<Array3<f32>> {
        let pad = self.prompt.tokenizer.special.image_pad;
        let mut embeds = self.embed_tokens(&ids[from..])?;
        let first = ids[..from].iter().filter(|&&t| t == pad).count();
        let pads = ids.iter().enumerate().skip(from).filter(|(_, t)| **t == pad).map(|(i, _)| i);
        for (row, i) in (first..).zip(pads) {
            embeds.slice_mut(s![0, i - from, ..]).assign(&image.row(row));
        }
        Ok(embeds)
    }

    /// Run `tokens` after what the cache holds and return the logits of the last `keep`
    /// positions, `[keep, vocab]`. Positions continue the current prompt's M-RoPE offsets
    /// (`delta`), so several tokens (forced or speculated) cost one pass over the weights.
    pub fn forward_tokens(&mut self, tokens: &[u32], delta: i64, keep: usize) -> Result<Array2<f32>> {
        let start = self.state.len as i64 + delta;
        let positions = Array2::from_shape_fn((3, tokens.len()), |(_, j)| start + j as i64);
        let embeds = self.embed_tokens(tokens)?;
        self.state.forward(&self.model, embeds, positions, keep)
    }

    /// Ids that end a turn: the generation config's end-of-sequence ids and `<|im_end|>`.
    pub fn end_of_turn(&self) -> Vec<u32> {
        let mut stops = self.model.manifest.generation.eos_token_ids.clone();
        stops.push(self.prompt.tokenizer.special.im_end);
        stops.sort_unstable();
        stops.dedup();
        stops
    }

    /// The token trie of the model's tokenizer (built once, shared by clones).
    pub fn grammar_factory(&self) -> Result<&GrammarFactory> {
        if let Some(g) = self.grammar.get() {
            return Ok(g);
        }
        let path = self.model.dir.join("tokenizer.json");
        let vocab = self.model.manifest.config.text.vocab_size;
        let g = GrammarFactory::from_tokenizer_file(&path, vocab, self.end_of_turn())?;
        Ok(self.grammar.get_or_init(|| g))
    }

    /// Positions the decoder cache holds.
    pub fn cached_tokens(&self) -> usize {
        self.state.len
    }

    /// Drop cached positions from `len` on (e.g. to retry a step, or reject speculated tokens).
    pub fn rewind(&mut self, len: usize) {
        self.state.truncate(len);
        if let Some((_, valid)) = &mut self.resident {
            *valid = (*valid).min(len);
        }
    }

    /// Answer `question` about `frame`.
    pub fn ask(&mut self, frame: &Frame, question: &str, opts: &GenerateOptions) -> Result<Answer> {
        self.ask_streaming(frame, question, opts, |_| ControlFlow::Continue(()))
    }

    /// [`Engine::ask`], calling `on_token` with each generated token as it comes; returning
    /// `ControlFlow::Break` stops generation.
    pub fn ask_streaming(
        &mut self,
        frame: &Frame,
        question: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Answer> {
        let (w, h) = frame.image.original_size;
        let text = self.prompt.spatialthinker_prompt(w, h, question)?;
        let merge = self.preprocessor.geometry.merge_size;
        let ids = self.prompt.encode(&text, &[frame.image.num_image_tokens(merge)])?;
        let grammar = opts.grammar.then_some(question);
        let g = self.generate(Some(frame), ids, grammar, opts, on_token)?;
        Ok(g.into_answer((w, h), question))
    }

    /// Generate after `messages` rendered through the checkpoint's own chat template, as they are
    /// (no SpatialThinker instruction): a general chat turn, with `frame` as the image of the one
    /// [`Content::Image`](crate::prompt::Content::Image) part if there is one. The grammar needs
    /// SpatialThinker's prompt (`opts.grammar` must be off here; [`Engine::ask`] has it).
    pub fn chat_streaming(
        &mut self,
        frame: Option<&Frame>,
        messages: &[Message],
        opts: &GenerateOptions,
        on_token: impl FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Answer> {
        if opts.grammar {
            return Err(Error::InvalidArgument {
                name: "grammar",
                reason: "constrains SpatialThinker's response format: use ask (the SpatialThinker prompt) for it"
                    .into(),
            });
        }
        let images = messages.iter().flat_map(|m| &m.content).filter(|c| matches!(c, Content::Image)).count();
        if images != usize::from(frame.is_some()) {
            return Err(Error::Prompt {
                reason: format!(
                    "the messages have {images} image parts but {} frames were given",
                    u8::from(frame.is_some())
                ),
            });
        }
        let bytes: usize =
            messages.iter().flat_map(|m| &m.content).map(|c| if let Content::Text(t) = c { t.len() } else { 0 }).sum();
        if bytes > MAX_MESSAGES_BYTES {
            return Err(Error::InvalidArgument {
                name: "messages",
                reason: format!("hold {bytes} bytes of text, above the limit of {MAX_MESSAGES_BYTES}"),
            });
        }
        let text = self.prompt.template.render(messages, true)?;
        let merge = self.preprocessor.geometry.merge_size;
        let counts: Vec<usize> = frame.iter().map(|f| f.image.num_image_tokens(merge)).collect();
        let ids = self.prompt.encode(&text, &counts)?;
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| {
                m.content.iter().rev().find_map(|c| if let Content::Text(t) = c { Some(t.as_str()) } else { None })
            })
            .unwrap_or("");
        let size = frame.map_or((0, 0), |f| f.image.original_size);
        let g = self.generate(frame, ids, None, opts, on_token)?;
        Ok(g.into_answer(size, question))
    }

    /// Prefill `ids` (the frame's prefix KV reused as far as it matches) and decode through the
    /// sampling chain; with `grammar` (the question) the output follows SpatialThinker's format.
    fn generate(
        &mut self,
        frame: Option<&Frame>,
        ids: Vec<u32>,
        grammar: Option<&str>,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<Generated> {
        let mut sampler = Sampler::new(&opts.sampling)?;
        let merge = self.preprocessor.geometry.merge_size;
        let limit = self.model.manifest.config.text.max_position_embeddings;
        let max_new = new_token_budget(opts.max_new_tokens, ids.len(), limit)?;
        let special = self.prompt.tokenizer.special;
        let grids: Vec<[usize; 3]> = frame.iter().map(|f| f.image.grid_thw).collect();
        let pos = crate::rope::mrope_positions(&ids, special.image_pad, &grids, merge)?;
        if let (Some(question), Some(frame)) = (grammar, frame) {
            let spec = OutputSpec::budgeted(frame.image.original_size, question, &opts.bounds, max_new);
            let matcher = self.grammar_factory()?.matcher(spec);
            let need = matcher.min_tokens();
            if max_new < need {
                return Err(Error::InvalidArgument {
                    name: "max_new_tokens",
                    reason: format!(
                        "{max_new} new tokens cannot hold the shortest valid answer to this question ({need} tokens \
                         with empty sections and the longest option); allow more, shorten the options, or turn the \
                         grammar off"
                    ),
                });
            }
            sampler.push_front(Box::new(matcher));
        }

        // Reuse the frame's prefix KV as far as it matches; at least one token is prefilled.
        let t = Instant::now();
        let (reuse, logits) = match frame {
            Some(frame) => {
                let reuse =
                    if opts.reuse_prefix { common_prefix(&frame.prefix_ids, &ids).min(ids.len() - 1) } else { 0 };
                let valid = match self.resident.take() {
                    Some((id, n)) if id == frame.id => n.min(reuse),
                    _ => 0,
                };
                self.state.restore(&self.model, &frame.prefix_kv, valid, reuse)?;
                self.state.reserve(&self.model, ids.len() + max_new)?;
                let embeds = self.prompt_embeds(&ids, reuse, &frame.embeds)?;
                let logits = self.state.forward(&self.model, embeds, pos.ids.slice(s![.., reuse..]).to_owned(), 1)?;
                self.resident = Some((frame.id, reuse));
                (reuse, logits)
            }
            None => {
                self.resident = None;
                self.state.truncate(0);
                self.state.reserve(&self.model, ids.len() + max_new)?;
                let embeds = self.embed_tokens(&ids)?;
                (0, self.state.forward(&self.model, embeds, pos.ids.clone(), 1)?)
            }
        };
        let prefill_ms = ms(t);
        let stops = self.end_of_turn();
        let mut history = ids.clone();
        let mut out: Vec<u32> = Vec::new();
        let mut decode_ms = Vec::new();
        let mut row = logits.row(0).to_vec();
        let tokenizer = Arc::clone(&self.prompt.tokenizer.inner);
        let mut stream = tokenizer.decode_stream(true);
        let tok_path = self.prompt.tokenizer.path.clone();
        // Append one token (sampled or forced): stream it, and say whether generation ends.
        let mut push = |t: u32, out: &mut Vec<u32>, history: &mut Vec<u32>| -> Result<Option<StopReason>> {
            out.push(t);
            history.push(t);
            let piece =
                stream.step(t).map_err(|e| Error::Tokenizer { path: tok_path.clone(), reason: e.to_string() })?;
            let event = TokenEvent { index: out.len() - 1, id: t, text: piece.as_deref().unwrap_or("") };
            Ok(if on_token(&event).is_break() {
                Some(StopReason::Callback)
            } else if stops.contains(&t) && !opts.ignore_eos {
                Some(StopReason::EndOfTurn)
            } else if out.len() == max_new {
                Some(StopReason::MaxNewTokens)
            } else {
                None
            })
        };
        // Prompt-lookup drafts never hold vision tokens (they have no embedding of their own).
        let no_draft = [special.image_pad, special.vision_start, special.vision_end];
        let (mut drafted, mut accepted) = (0usize, 0usize);
        let mut next = sampler.sample(&mut row, &history)?;
        sampler.accept(next)?;
        let stop = 'generate: loop {
            let mut step = vec![next];
            if let Some(stop) = push(next, &mut out, &mut history)? {
                break stop;
            }
            // Tokens the grammar forces go into the same decoder pass.
            for f in sampler.forced()? {
                sampler.accept(f)?;
                step.push(f);
                if let Some(stop) = push(f, &mut out, &mut history)? {
                    break 'generate stop;
                }
            }
            // Exact speculation: draft tokens ride along; each is kept only if the sampler,
            // given the logits after everything before it, picks it itself.
            let room = max_new.saturating_sub(out.len() + 1);
            let draft = crate::decode::prompt_lookup(&history, 3, 2, opts.speculate.min(room), &no_draft);
            step.extend_from_slice(&draft);
            drafted += draft.len();
            let t = Instant::now();
            let logits = self.forward_tokens(&step, pos.delta, draft.len() + 1)?;
            decode_ms.push(ms(t));
            // Row i holds the logits after the pass's first `step.len() - draft.len() + i` tokens.
            // After a kept draft token the grammar may force the next one: it is taken as such (no
            // draw from the sampler's RNG, exactly as without speculation). Row 0 follows the
            // forced run drained above, so there is nothing to ask there.
            for i in 0..=draft.len() {
                let forced = if i == 0 { None } else { sampler.forced()?.first().copied() };
                let pick = match forced {
                    Some(f) => f,
                    None => sampler.sample(&mut logits.row(i).to_vec(), &history)?,
                };
                sampler.accept(pick)?;
                if i < draft.len() && pick == draft[i] {
                    accepted += 1;
                    if let Some(stop) = push(pick, &mut out, &mut history)? {
                        break 'generate stop;
                    }
                    continue;
                }
                // The first disagreement (or the token after a fully kept draft) is the next
                // token; the cache drops the draft positions after the kept ones.
                let fed = self.cached_tokens();
                self.rewind(fed - (draft.len() - i));
                next = pick;
                break;
            }
        };
        let raw = self.prompt.tokenizer.decode(&out, true)?;
        let ft = frame.map(|f| f.timings.clone()).unwrap_or_default();
        let timings = Timings {
            preprocess_ms: ft.preprocess_ms,
            vision_ms: ft.vision_ms,
            prefix_prefill_ms: ft.prefix_prefill_ms,
            prefill_ms,
            decode_tokens: out.len().saturating_sub(1),
            decode_ms,
            draft_tokens: drafted,
            accepted_draft_tokens: accepted,
        };
        Ok(Generated { raw, token_ids: out, prompt_tokens: ids.len(), reused_prompt_tokens: reuse, stop, timings })
    }
}

/// What [`Engine::generate`] produced, before the response is parsed.
struct Generated {
    raw: String,
    token_ids: Vec<u32>,
    prompt_tokens: usize,
    reused_prompt_tokens: usize,
    stop: StopReason,
    timings: Timings,
}

impl Generated {
    fn into_answer(self, size: (u32, u32), question: &str) -> Answer {
        Answer {
            response: parse_response(&self.raw, &Rules::new(size, question)),
            raw: self.raw,
            token_ids: self.token_ids,
            prompt_tokens: self.prompt_tokens,
            reused_prompt_tokens: self.reused_prompt_tokens,
            stop: self.stop,
            timings: self.timings,
        }
    }
}

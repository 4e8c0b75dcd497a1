//! The Qwen2.5-VL text decoder in tch, trainable through LoRA: every shape and id from the
//! checkpoint's config (both layouts, via st-checkpoint), HF tensor names, weights read through
//! st-checkpoint's memory-mapped safetensors (bf16, f16 or f32 sources), frozen in the base kind
//! (f32 on CPU, bf16 on CUDA). RMSNorm, GQA attention with M-RoPE (SDPA), SwiGLU MLP, tied or
//! untied lm_head, a KV cache for generation, and per-layer gradient checkpointing.

pub mod lora;
pub mod rotary;

pub use lora::{Linear, Lora, LoraOptions, Mode};

use crate::error::{Error, Result};
use rotary::{RopeTables, Rotary};
use st_checkpoint::{Checkpoint, TextConfig};
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

/// How to load the base weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    /// Kind of the frozen weights and activations; `None`: f32 on CPU, bf16 on CUDA.
    pub kind: Option<Kind>,
}

impl LoadOptions {
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, kind: None }
    }
    fn base_kind(&self) -> Kind {
        self.kind.unwrap_or(if self.device == Device::Cpu { Kind::Float } else { Kind::BFloat16 })
    }
}

/// One forward's inputs: `[B, S]` token ids, `[3, B, S]` M-RoPE positions, and the image
/// embeddings `[N, hidden]` of every `<|image_pad|>` of the batch in row-major order.
#[derive(Debug)]
pub struct Batch {
    pub input_ids: Tensor,
    pub positions: Tensor,
    pub image_embeds: Option<Tensor>,
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linears(&self) -> [&Linear; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }
}

/// Keys and values of every layer, `[B, kv_heads, len, head_dim]`, appended per step.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.size()[2])
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy a batch-1 cache to `n` rows (the G rollouts of one prompt share its prefill).
    pub fn repeat_batch(&mut self, n: i64) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.repeat([n, 1, 1, 1]);
            *v = v.repeat([n, 1, 1, 1]);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> i64 {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.numel() + v.numel()) as i64 * k.kind().elt_size_in_bytes() as i64)
            .sum()
    }
}

pub struct TextModel {
    pub config: TextConfig,
    pub image_token_id: i64,
    pub device: Device,
    pub kind: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// None when tied to the embedding.
    lm_head: Option<Tensor>,
    rotary: Rotary,
    lora: Option<LoraOptions>,
    adapter_enabled: Cell<bool>,
    training: Cell<bool>,
    /// When set, layer i seeds libtorch's generator with `seed + i` before it runs, so dropout
    /// masks repeat exactly when a checkpointed layer is recomputed.
    dropout_seed: Cell<Option<i64>>,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("layers", &self.layers.len())
            .field("device", &self.device)
            .field("kind", &self.kind)
            .field("lora", &self.lora)
            .finish()
    }
}

fn load_tensor(ckpt: &Checkpoint, name: &str, opts: &LoadOptions) -> Result<Tensor> {
    let t = ckpt.weights.get(name)?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let values = t.to_f32()?;
    let kind = opts.base_kind();
    let out = Tensor::f_from_slice(&values)?.f_view(shape.as_slice())?.f_to_kind(kind)?.f_to_device(opts.device)?;
    ckpt.weights.release(name);
    Ok(out.set_requires_grad(false))
}

fn load_linear(ckpt: &Checkpoint, prefix: &str, bias: bool, opts: &LoadOptions) -> Result<Linear> {
    Ok(Linear {
        name: prefix.to_string(),
        weight: load_tensor(ckpt, &format!("{prefix}.weight"), opts)?,
        bias: if bias { Some(load_tensor(ckpt, &format!("{prefix}.bias"), opts)?) } else { None },
        lora: None,
    })
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    weight * (xf * (var + eps).rsqrt()).to_kind(kind)
}

impl TextModel {
    /// Load the text decoder of an opened checkpoint.
    pub fn load(ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let c = &ckpt.config;
        let t = c.text.clone();
        let mut layers = Vec::with_capacity(t.num_hidden_layers);
        for i in 0..t.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: load_tensor(ckpt, &format!("{p}.input_layernorm.weight"), opts)?,
                post_norm: load_tensor(ckpt, &format!("{p}.post_attention_layernorm.weight"), opts)?,
                q: load_linear(ckpt, &format!("{p}.self_attn.q_proj"), true, opts)?,
                k: load_linear(ckpt, &format!("{p}.self_attn.k_proj"), true, opts)?,
                v: load_linear(ckpt, &format!("{p}.self_attn.v_proj"), true, opts)?,
                o: load_linear(ckpt, &format!("{p}.self_attn.o_proj"), false, opts)?,
                gate: load_linear(ckpt, &format!("{p}.mlp.gate_proj"), false, opts)?,
                up: load_linear(ckpt, &format!("{p}.mlp.up_proj"), false, opts)?,
                down: load_linear(ckpt, &format!("{p}.mlp.down_proj"), false, opts)?,
            });
        }
        let embed = load_tensor(ckpt, "model.embed_tokens.weight", opts)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(load_tensor(ckpt, "lm_head.weight", opts)?) };
        Ok(Self {
            rotary: Rotary::new(t.head_dim, t.rope_theta, &t.mrope_section, opts.device),
            norm: load_tensor(ckpt, "model.norm.weight", opts)?,
            config: t,
            image_token_id: i64::from(c.image_token_id),
            device: opts.device,
            kind: opts.base_kind(),
            embed,
            layers,
            lm_head,
            lora: None,
            adapter_enabled: Cell::new(true),
            training: Cell::new(false),
            dropout_seed: Cell::new(None),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn lora_options(&self) -> Option<&LoraOptions> {
        self.lora.as_ref()
    }

    /// Add fresh LoRA adapters to the target linears: A ~ kaiming-uniform(√5) as PEFT, B = 0
    /// (so the adapted model starts equal to the base), drawn from `seed`.
    pub fn add_lora(&mut self, opts: &LoraOptions, seed: i64) -> Result<()> {
        if opts.rank == 0 {
            return Err(Error::InvalidArgument { name: "--rank", reason: "must be at least 1".into() });
        }
        for t in &opts.targets {
            if st_checkpoint::adapter::module_path(t).is_none() {
                return Err(Error::InvalidArgument {
                    name: "targets",
                    reason: format!("{t:?} is not one of {:?}", st_checkpoint::adapter::TEXT_LINEARS),
                });
            }
        }
        if !(0.0..1.0).contains(&opts.dropout) {
            return Err(Error::InvalidArgument {
                name: "dropout",
                reason: format!("{} is not in [0, 1)", opts.dropout),
            });
        }
        tch::manual_seed(seed);
        let (r, scale, device) = (opts.rank as i64, opts.scale(), self.device);
        for layer in &mut self.layers {
            for lin in layer.linears_mut() {
                let short = lin.name.rsplit('.').next().unwrap_or_default();
                if !opts.targets.iter().any(|t| t == short) {
                    lin.lora = None;
                    continue;
                }
                let (n_in, n_out) = (lin.in_features(), lin.out_features());
                // kaiming_uniform_(a = √5): bound = gain·√(3 / fan_in), gain = √(2 / (1 + a²)).
                let bound = (2.0f64 / 6.0).sqrt() * (3.0 / n_in as f64).sqrt();
                let a =
                    (Tensor::rand([r, n_in], (Kind::Float, device)) * (2.0 * bound) - bound).set_requires_grad(true);
                let b = Tensor::zeros([n_out, r], (Kind::Float, device)).set_requires_grad(true);
                lin.lora = Some(Lora { a, b, scale, dropout: opts.dropout });
            }
        }
        self.lora = Some(opts.clone());
        Ok(())
    }

    /// The trainable tensors, by PEFT-style name (`model.layers.0.self_attn.q_proj.lora_A`), in a
    /// fixed order.
    pub fn lora_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(l) = &lin.lora {
                    out.push((format!("{}.lora_A", lin.name), &l.a));
                    out.push((format!("{}.lora_B", lin.name), &l.b));
                }
            }
        }
        out
    }

    /// Linears with an adapter.
    pub fn adapted_linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| l.linears()).filter(|l| l.lora.is_some())
    }

    pub(crate) fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut()).find(|l| l.name == name)
    }

    /// Switch the adapters off (the reference policy) or on, without copying any weight.
    pub fn set_adapter_enabled(&self, on: bool) {
        self.adapter_enabled.set(on);
    }
    pub fn adapter_enabled(&self) -> bool {
        self.adapter_enabled.get()
    }
    /// Dropout on (training) or off.
    pub fn set_training(&self, on: bool) {
        self.training.set(on);
    }
    pub fn set_dropout_seed(&self, seed: Option<i64>) {
        self.dropout_seed.set(seed);
    }

    fn mode(&self) -> Mode {
        Mode { adapter: self.adapter_enabled.get(), train: self.training.get() }
    }

    /// Token embeddings `[B, S, H]` with the image rows at the `<|image_pad|>` positions.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let ids = batch.input_ids.to_device(self.device);
        let emb = Tensor::f_embedding(&self.embed, &ids, -1, false, false)?;
        let mask = ids.eq(self.image_token_id);
        let n_image = i64::try_from(mask.sum(Kind::Int64)).unwrap_or(0);
        match &batch.image_embeds {
            None if n_image == 0 => Ok(emb),
            None => Err(Error::InvalidArgument {
                name: "image_embeds",
                reason: format!("the batch has {n_image} image tokens but no image embeddings"),
            }),
            Some(img) => {
                let rows = img.size()[0];
                if rows != n_image || img.size()[1] != self.config.hidden_size as i64 {
                    return Err(Error::InvalidArgument {
                        name: "image_embeds",
                        reason: format!(
                            "{:?} for {n_image} image tokens of hidden size {}",
                            img.size(),
                            self.config.hidden_size
                        ),
                    });
                }
                let img = img.to_device(self.device).to_kind(self.kind);
                Ok(emb.f_masked_scatter(&mask.unsqueeze(-1).expand_as(&emb), &img)?)
            }
        }
    }

    pub fn rope(&self, positions: &Tensor) -> RopeTables {
        self.rotary.tables(positions, self.kind)
    }

    /// One decoder layer over `h` `[B, S, H]`; with `cache`, keys and values are appended to it
    /// and attention covers the cached positions too.
    pub fn layer(&self, i: usize, h: &Tensor, rope: &RopeTables, cache: Option<&mut KvCache>) -> Tensor {
        if let Some(seed) = self.dropout_seed.get() {
            tch::manual_seed(seed + i as i64);
        }
        let l = &self.layers[i];
        let t = &self.config;
        let mode = self.mode();
        let (b, s) = (h.size()[0], h.size()[1]);
        let (nh, nkv, hd) = (t.num_attention_heads as i64, t.num_key_value_heads as i64, t.head_dim as i64);
        let x = rms_norm(h, &l.input_norm, t.rms_norm_eps);
        let q = l.q.forward(&x, mode).view([b, s, nh, hd]).transpose(1, 2);
        let k = l.k.forward(&x, mode).view([b, s, nkv, hd]).transpose(1, 2);
        let v = l.v.forward(&x, mode).view([b, s, nkv, hd]).transpose(1, 2);
        let q = rotary::apply(&q, rope);
        let k = rotary::apply(&k, rope);
        let (k, v, past) = match cache {
            Some(c) => {
                if c.layers.len() < self.layers.len() {
                    c.layers.resize_with(self.layers.len(), || None);
                }
                let (k, v, past) = match c.layers[i].take() {
                    Some((pk, pv)) => {
                        let past = pk.size()[2];
                        (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2), past)
                    }
                    None => (k, v, 0),
                };
                c.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v, past)
            }
            None => (k, v, 0),
        };
        let rep = nh / nkv;
        let (k, v) = if rep > 1 {
            (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
        } else {
            (k, v)
        };
        let attn = if past == 0 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, s > 1, None, false)
        } else if s == 1 {
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, false)
        } else {
            // Query i sees keys up to past + i (causal over token index, not M-RoPE position).
            let total = past + s;
            let qi = Tensor::arange(s, (Kind::Int64, self.device)).unsqueeze(1) + past;
            let kj = Tensor::arange(total, (Kind::Int64, self.device)).unsqueeze(0);
            let mask = kj.le_tensor(&qi);
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false)
        };
        let attn = attn.transpose(1, 2).reshape([b, s, nh * hd]);
        let h = h + l.o.forward(&attn, mode);
        let x = rms_norm(&h, &l.post_norm, t.rms_norm_eps);
        let mlp = l.down.forward(&(l.gate.forward(&x, mode).silu() * l.up.forward(&x, mode)), mode);
        h + mlp
    }

    /// Final norm.
    pub fn final_norm(&self, h: &Tensor) -> Tensor {
        rms_norm(h, &self.norm, self.config.rms_norm_eps)
    }

    /// f32 logits of normed hidden states `[…, H]` → `[…, vocab]`.
    pub fn logits(&self, normed: &Tensor) -> Tensor {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        normed.linear::<Tensor>(w, None).to_kind(Kind::Float)
    }

    /// Normed hidden states of the last layer, `[B, S, H]`.
    pub fn hidden(&self, batch: &Batch, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let mut h = self.embed(batch)?;
        let rope = self.rope(&batch.positions);
        for i in 0..self.layers.len() {
            h = self.layer(i, &h, &rope, cache.as_deref_mut());
        }
        Ok(self.final_norm(&h))
    }

    /// Logits `[B, S, vocab]` (f32) of a full forward.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.logits(&self.hidden(batch, None)?))
    }

    /// Log-probability of each position's label under the model, `[B, S]` f32 (0 where the label
    /// is -100): what GRPO's ratio and KL are made of. Logits are made only for labelled rows.
    pub fn token_logprobs(&self, normed: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let shape = labels.size();
        let labels = labels.to_device(self.device).view([-1]);
        let idx = labels.ne(-100).nonzero().squeeze_dim(1);
        let rows = normed.view([-1, self.config.hidden_size as i64]).index_select(0, &idx);
        let logp = self.logits(&rows).f_log_softmax(-1, Kind::Float)?;
        let picked = logp.gather(1, &labels.index_select(0, &idx).unsqueeze(1), false).squeeze_dim(1);
        let out = Tensor::zeros([labels.size()[0]], (Kind::Float, self.device)).index_put(&[Some(idx)], &picked, false);
        Ok(out.view(shape.as_slice()))
    }

    /// Summed cross-entropy of the positions whose label is not -100 (`labels` [B, S]: the token
    /// that should follow each position), and their count. Logits are made only for those rows.
    pub fn token_loss(&self, normed: &Tensor, labels: &Tensor) -> Result<(Tensor, i64)> {
        let labels = labels.to_device(self.device).view([-1]);
        let idx = labels.ne(-100).nonzero().squeeze_dim(1);
        let n = idx.size()[0];
        let rows = normed.view([-1, self.config.hidden_size as i64]).index_select(0, &idx);
        let logits = self.logits(&rows);
        let target = labels.index_select(0, &idx);
        let loss = logits.f_cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Sum, -100, 0.0)?;
        Ok((loss, n))
    }

    /// Forward and backward of `loss_scale · Σ CE` over one micro-batch, accumulating the LoRA
    /// gradients; returns the summed CE (unscaled) and the token count. With `checkpoint`, only
    /// each layer's input is kept: the layers run without a graph first, then each is recomputed
    /// from its saved input, last first, and back-propagated with the gradient from above
    /// (backward of ⟨out, g⟩) — the same gradients with one layer's activations alive at a time.
    pub fn forward_backward(
        &self,
        batch: &Batch,
        labels: &Tensor,
        loss_scale: f64,
        checkpoint: bool,
    ) -> Result<(f64, i64)> {
        if !checkpoint {
            let h = self.hidden(batch, None)?;
            let (loss, n) = self.token_loss(&h, labels)?;
            let value = f64::try_from(&loss)?;
            (loss * loss_scale).f_backward()?;
            return Ok((value, n));
        }
        let rope = self.rope(&batch.positions);
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = tch::no_grad(|| self.embed(batch))?;
        tch::no_grad(|| {
            for i in 0..self.layers.len() {
                inputs.push(h.shallow_clone());
                h = self.layer(i, &h, &rope, None);
            }
        });
        let top = h.detach().set_requires_grad(true);
        let (loss, n) = self.token_loss(&self.final_norm(&top), labels)?;
        let value = f64::try_from(&loss)?;
        (loss * loss_scale).f_backward()?;
        let mut grad = top.grad();
        for i in (0..self.layers.len()).rev() {
            let x = inputs[i].detach().set_requires_grad(true);
            let out = self.layer(i, &x, &rope, None);
            (out * &grad).sum(Kind::Float).f_backward()?;
            grad = x.grad();
        }
        Ok((value, n))
    }
}

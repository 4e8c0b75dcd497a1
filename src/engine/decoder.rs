//! The decoder graph with its KV cache: `forward` runs any number of new tokens (a prefill, one
//! decode token, or several forced/speculated tokens) after the cached ones and returns the
//! logits of the last `keep` positions.
//!
//! GroupQueryAttention decoders get one buffer per layer of `capacity` positions, bound through
//! IoBinding as both `past_*` and `present_*`: ORT's GQA kernel sees the same pointer and appends
//! the new keys/values in place, so nothing is copied per step. The buffers live where the attention
//! runs ([`KvPlace`]): host memory on the CPU, the GPU's memory where st's attention node runs on CUDA
//! (there they are read and written only through ORT's copies: growing, snapshots, restores).
//! Standard-attention decoders (the TensorRT form) concatenate in the graph; their cache round-trips
//! through host arrays.

use super::model::ExportedModel;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2, Array3, Array4, Axis, s};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, SessionInputValue};
use ort::value::Tensor;

/// Keys and values of the first `len` positions, per layer `[kv_heads, len, head_dim]`, in host
/// memory: what a frame keeps of its prompt prefix.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    pub layers: Vec<(Array3<f32>, Array3<f32>)>,
    pub len: usize,
}

impl KvSnapshot {
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.len() + v.len()) * 4).sum()
    }
}

/// Where a GroupQueryAttention decoder's shared KV buffers live.
#[derive(Debug, Clone)]
pub enum KvPlace {
    /// Host memory, read and written in place.
    Host,
    /// Memory from this allocator (a CUDA device's where st's attention runs there), read and written
    /// only through ORT's copies.
    Allocator(MemoryInfo<'static>),
}

impl KvPlace {
    /// Where a model's decoder attends on `device`: on a CUDA (or TensorRT) device when its attention node is st's,
    /// which has a CUDA kernel; else on the host (ORT's GroupQueryAttention takes fp16 on CUDA, so an f32
    /// graph's runs on the CPU, as does every node on the CPU provider).
    pub fn for_model(manifest: &st_checkpoint::Manifest, device: &super::Device) -> Result<Self> {
        let device_id = match *device {
            super::Device::Cuda { device_id } | super::Device::TensorRt { device_id, .. } => device_id,
            super::Device::Cpu => return Ok(KvPlace::Host),
        };
        let st_attention =
            manifest.graphs.get("decoder").and_then(|g| g.precision.get("attention")).map(String::as_str)
                == Some(st_export::Attention::StGroupQuery.node());
        if !st_attention {
            return Ok(KvPlace::Host);
        }
        let info = MemoryInfo::new(AllocationDevice::CUDA, device_id, AllocatorType::Device, MemoryType::Default)
            .map_err(ort_err)?;
        Ok(KvPlace::Allocator(info))
    }
}

enum Cache {
    Shared { binding: Option<Box<IoBinding>>, layers: Vec<(Tensor<f32>, Tensor<f32>)>, capacity: usize, place: KvPlace },
    Growing { layers: Vec<(Array4<f32>, Array4<f32>)> },
}

/// `t` in host memory: itself on the host, else a copy.
fn on_host<'t>(t: &'t Tensor<f32>, place: &KvPlace) -> Result<std::borrow::Cow<'t, Tensor<f32>>> {
    match place {
        KvPlace::Host => Ok(std::borrow::Cow::Borrowed(t)),
        KvPlace::Allocator(_) => {
            let mut host = Tensor::<f32>::new(&Allocator::default(), t.shape().clone()).map_err(ort_err)?;
            t.copy_into(&mut host).map_err(ort_err)?;
            Ok(std::borrow::Cow::Owned(host))
        }
    }
}

/// The decoder's cache state: positions `0..len` are filled.
pub struct DecoderState {
    cache: Cache,
    pub len: usize,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
}

fn ort_err(e: impl std::fmt::Display) -> Error {
    Error::Ort { context: "decoder graph".into(), reason: e.to_string() }
}

/// Shared buffers grow in steps of this many positions.
const CAPACITY_STEP: usize = 256;

type Inputs = Vec<(String, SessionInputValue<'static>)>;

fn tensor<
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
    D: ndarray::Dimension + 'static,
>(
    a: ndarray::Array<T, D>,
) -> Result<SessionInputValue<'static>> {
    Ok(Tensor::from_array(a).map_err(ort_err)?.into())
}

impl DecoderState {
    /// The state for `model`, its shared KV buffers (if any) at `model.kv_place`.
    pub fn new(model: &ExportedModel) -> Self {
        Self::new_at(model, model.kv_place.clone())
    }

    /// The state for `model` with its shared KV buffers at `place` (ignored by standard-attention
    /// decoders, whose cache is host arrays).
    pub fn new_at(model: &ExportedModel, place: KvPlace) -> Self {
        let t = &model.manifest.config.text;
        let (layers, kv_heads, head_dim) = (t.num_hidden_layers, t.num_key_value_heads, t.head_dim);
        let cache = if model.decoder_uses_gqa {
            Cache::Shared { binding: None, layers: Vec::new(), capacity: 0, place }
        } else {
            let empty = Array4::<f32>::zeros((1, kv_heads, 0, head_dim));
            Cache::Growing { layers: vec![(empty.clone(), empty); layers] }
        };
        Self { cache, len: 0, layers, kv_heads, head_dim }
    }

    /// Positions the shared buffers hold now (0 for the growing form).
    pub fn capacity(&self) -> usize {
        match &self.cache {
            Cache::Shared { capacity, .. } => *capacity,
            Cache::Growing { .. } => 0,
        }
    }

    /// Make room for `needed` positions, keeping the filled ones.
    pub fn reserve(&mut self, model: &ExportedModel, needed: usize) -> Result<()> {
        let (kvh, hd, len) = (self.kv_heads, self.head_dim, self.len);
        let Cache::Shared { binding, layers, capacity, place } = &mut self.cache else { return Ok(()) };
        if needed <= *capacity && binding.is_some() {
            return Ok(());
        }
        let cap = needed.max(*capacity * 2).div_ceil(CAPACITY_STEP) * CAPACITY_STEP;
        let session = model.decoder.lock()?;
        let device = match place {
            KvPlace::Host => None,
            KvPlace::Allocator(info) => Some(Allocator::new(&session, info.clone()).map_err(ort_err)?),
        };
        let mut fresh = Vec::with_capacity(self.layers);
        for i in 0..self.layers {
            let mut pair = Vec::with_capacity(2);
            for old in [layers.get(i).map(|l| &l.0), layers.get(i).map(|l| &l.1)] {
                // Laid out in host memory (zeros, then the filled positions), moved to the device if any.
                let mut t = Tensor::<f32>::new(session.allocator(), [1, kvh, cap, hd]).map_err(ort_err)?;
                let (_, dst) = t.extract_tensor_mut();
                dst.fill(0.0);
                if let Some(old) = old {
                    let old = on_host(old, place)?;
                    let (_, src) = old.extract_tensor();
                    for h in 0..kvh {
                        let n = len * hd;
                        dst[h * cap * hd..][..n].copy_from_slice(&src[h * *capacity * hd..][..n]);
                    }
                }
                if let Some(device) = &device {
                    let mut d = Tensor::<f32>::new(device, [1, kvh, cap, hd]).map_err(ort_err)?;
                    t.copy_into(&mut d).map_err(ort_err)?;
                    t = d;
                }
                pair.push(t);
            }
            let v = pair.pop().ok_or_else(|| ort_err("allocation"))?;
            let k = pair.pop().ok_or_else(|| ort_err("allocation"))?;
            fresh.push((k, v));
        }
        let mut b = session.create_binding().map_err(ort_err)?;
        for (i, (k, v)) in fresh.iter_mut().enumerate() {
            b.bind_input(format!("past_key.{i}"), &*k).map_err(ort_err)?;
            b.bind_input(format!("past_value.{i}"), &*v).map_err(ort_err)?;
            b.bind_output(format!("present_key.{i}"), k).map_err(ort_err)?;
            b.bind_output(format!("present_value.{i}"), v).map_err(ort_err)?;
        }
        *layers = fresh;
        *binding = Some(Box::new(b));
        *capacity = cap;
        Ok(())
    }

    /// Forget positions from `len` on (they are overwritten by the next forward).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if let Cache::Growing { layers } = &mut self.cache {
            for (k, v) in layers {
                *k = k.slice(s![.., .., ..self.len, ..]).to_owned();
                *v = v.slice(s![.., .., ..self.len, ..]).to_owned();
            }
        }
    }

    /// Copy the first `len` positions out.
    pub fn snapshot(&self, len: usize) -> Result<KvSnapshot> {
        let len = len.min(self.len);
        let (kvh, hd) = (self.kv_heads, self.head_dim);
        let layers = match &self.cache {
            Cache::Shared { layers, capacity, place, .. } => {
                let take = |t: &Tensor<f32>| -> Result<Array3<f32>> {
                    let t = on_host(t, place)?;
                    let (_, src) = t.extract_tensor();
                    Ok(Array3::from_shape_fn((kvh, len, hd), |(h, p, d)| src[(h * capacity + p) * hd + d]))
                };
                layers.iter().map(|(k, v)| Ok((take(k)?, take(v)?))).collect::<Result<_>>()?
            }
            Cache::Growing { layers } => {
                let take = |a: &Array4<f32>| a.index_axis(Axis(0), 0).slice(s![.., ..len, ..]).to_owned();
                layers.iter().map(|(k, v)| (take(k), take(v))).collect()
            }
        };
        Ok(KvSnapshot { layers, len })
    }

    /// Make positions `0..to` those of `snap`, copying only `from..to` (the caller knows the
    /// earlier ones already hold the same tokens).
    pub fn restore(&mut self, model: &ExportedModel, snap: &KvSnapshot, from: usize, to: usize) -> Result<()> {
        let to = to.min(snap.len);
        let from = from.min(to);
        self.reserve(model, to)?;
        let hd = self.head_dim;
        match &mut self.cache {
            Cache::Shared { layers, capacity, place, .. } => {
                let write = |dst: &mut Tensor<f32>, src: &Array3<f32>| {
                    let (_, dst) = dst.extract_tensor_mut();
                    for (h, head) in src.outer_iter().enumerate() {
                        let rows = head.slice(s![from..to, ..]);
                        let off = (h * *capacity + from) * hd;
                        for (r, row) in rows.outer_iter().enumerate() {
                            dst[off + r * hd..][..hd].iter_mut().zip(row).for_each(|(d, s)| *d = *s);
                        }
                    }
                };
                for ((k, v), (sk, sv)) in layers.iter_mut().zip(&snap.layers) {
                    for (dst, src) in [(k, sk), (v, sv)] {
                        match place {
                            KvPlace::Host => write(dst, src),
                            KvPlace::Allocator(_) => {
                                let mut host = on_host(dst, place)?.into_owned();
                                write(&mut host, src);
                                host.copy_into(&mut *dst).map_err(ort_err)?;
                            }
                        }
                    }
                }
            }
            Cache::Growing { layers } => {
                for ((k, v), (sk, sv)) in layers.iter_mut().zip(&snap.layers) {
                    *k = sk.slice(s![.., ..to, ..]).to_owned().insert_axis(Axis(0));
                    *v = sv.slice(s![.., ..to, ..]).to_owned().insert_axis(Axis(0));
                }
            }
        }
        self.len = to;
        Ok(())
    }

    /// Run `embeds` `[1, seq, hidden]` at M-RoPE `positions` `[3, seq]` after the `len` cached
    /// positions; returns the logits of the last `keep` positions, `[keep, vocab]`.
    pub fn forward(
        &mut self,
        model: &ExportedModel,
        embeds: Array3<f32>,
        positions: Array2<i64>,
        keep: usize,
    ) -> Result<Array2<f32>> {
        let t = &model.manifest.config.text;
        let seq = embeds.dim().1;
        let (past, total) = (self.len, self.len + seq);
        if seq == 0 || keep == 0 || keep > seq {
            return Err(Error::InvalidArgument {
                name: "tokens",
                reason: format!("a decoder step needs 1 ≤ keep ({keep}) ≤ new tokens ({seq})"),
            });
        }
        let (cos, sin) = crate::rope::mrope_cos_sin(positions.view(), t.head_dim, t.rope_theta, &t.mrope_section)?;
        let mut inputs: Inputs = vec![
            ("inputs_embeds".into(), tensor(embeds)?),
            ("rope_cos".into(), tensor(cos.insert_axis(Axis(0)))?),
            ("rope_sin".into(), tensor(sin.insert_axis(Axis(0)))?),
            ("logits_to_keep".into(), tensor(Array1::from(vec![keep as i64]))?),
        ];
        let logits = match &mut self.cache {
            Cache::Shared { .. } => {
                self.reserve(model, total)?;
                let Cache::Shared { binding: Some(binding), .. } = &mut self.cache else {
                    return Err(ort_err("the KV buffers were not allocated"));
                };
                inputs.push(("seqlens_k".into(), tensor(Array1::from(vec![total as i32 - 1]))?));
                inputs.push(("total_sequence_length".into(), tensor(ndarray::arr0(total as i32))?));
                for (name, value) in &inputs {
                    binding.bind_input(name, value).map_err(ort_err)?;
                }
                let mut session = model.decoder.lock()?;
                // Rebound every step: ORT would otherwise reuse the last step's logits buffer,
                // whose shape changes with `keep`.
                binding.bind_output_to_device("logits", session.allocator().memory_info()).map_err(ort_err)?;
                let out = session.run_binding(binding).map_err(ort_err)?;
                logits_rows(&out["logits"])?
            }
            Cache::Growing { layers } => {
                // Causal by token index (not by M-RoPE position).
                let bias =
                    Array4::from_shape_fn((1, 1, seq, total), |(_, _, i, j)| if j > past + i { f32::MIN } else { 0.0 });
                inputs.push(("attention_bias".into(), tensor(bias)?));
                for (i, (k, v)) in layers.iter().enumerate() {
                    inputs.push((format!("past_key.{i}"), tensor(k.clone())?));
                    inputs.push((format!("past_value.{i}"), tensor(v.clone())?));
                }
                let mut session = model.decoder.lock()?;
                let out = session.run(inputs).map_err(ort_err)?;
                for (i, slot) in layers.iter_mut().enumerate() {
                    let take = |name: String| -> Result<Array4<f32>> {
                        let a = out[name.as_str()].try_extract_array::<f32>().map_err(ort_err)?;
                        a.to_owned().into_dimensionality().map_err(ort_err)
                    };
                    *slot = (take(format!("present_key.{i}"))?, take(format!("present_value.{i}"))?);
                }
                logits_rows(&out["logits"])?
            }
        };
        self.len = total;
        Ok(logits)
    }
}

/// `[1, keep, vocab]` → `[keep, vocab]`.
fn logits_rows(v: &ort::value::DynValue) -> Result<Array2<f32>> {
    let a = v.try_extract_array::<f32>().map_err(ort_err)?;
    a.index_axis(Axis(0), 0).to_owned().into_dimensionality().map_err(ort_err)
}

//! The shared pieces every graph is built from: weights by HF name, RMSNorm, linear layers
//! (precision is a property of the linear, not a second copy of the model), rotary embedding,
//! SwiGLU MLP. Node names are the HF module names.

use crate::error::{Error, Result};
use crate::graph::{Attr, Graph};
use crate::onnx::tensor_proto::DataType;
use crate::precision::Precision;
use crate::quant::fp8;
use crate::quant::nbits::{self, NBitsScheme};
use st_checkpoint::Weights;
use st_kernels::cpu::tiles::TILE;
use std::io::Write;

/// How the quantized linear layers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearOptions {
    /// The decoder's quantized linears at `Precision::Int4` (bits 4).
    pub int4: NBitsScheme,
    /// Precision of lm_head (docs/FORMATS.md#precisions: at least int8). `Int8` uses `int8` below.
    pub lm_head: Precision,
    /// The 8-bit scheme of `Precision::Int8` linears.
    pub int8: NBitsScheme,
    /// MatMulNBits `accuracy_level`: 0 = unset (fp32 compute on CPU), 4 = int8 activations.
    pub accuracy_level: i64,
    /// Write st's fused ops (`ai.st.MatMulInt4` for 4-bit linears, `ai.st.MatMulFp8`) instead of
    /// MatMulNBits / DequantizeLinear→Gemm (`--target cuda`; f32 scales, as its CUDA kernels take).
    pub fused_ops: bool,
    /// The operator of the 4-bit linears (and of 8-bit ones at accuracy_level 4: lm_head) on
    /// `--target cpu` (TensorRT always gets MatMulNBits).
    pub int4_op: Int4Op,
    /// Where st's tiled ops run an MLP's gate and up projections (int4 or int8 weights, int8 activations, no
    /// bias): one `ai.st.MatMulInt4` / `MatMulInt8` over both, tiles alternating, with `activation` = "swiglu" writing
    /// silu(gate) · up itself (one call instead of two, no Sigmoid/Mul nodes; `st export --separate-mlp`
    /// turns it off).
    pub fused_mlp: bool,
}

/// How a 4-bit linear (and an 8-bit one with int8 activations: lm_head) is written for the CPU provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Int4Op {
    /// `ai.st.MatMulInt4` with f16 scales read in place (no prepacked copy) and, at `accuracy_level` 4,
    /// the weights in column tiles for st's int8-activation GEMV and GEMM (st_kernels::cpu::tiles):
    /// the default, faster than MLAS at prefill, forced runs and decode on the 7B with ~0.5 GB less
    /// memory (docs/PERFORMANCE.md); 8-bit linears at `accuracy_level` 4 as `ai.st.MatMulInt8`, the same
    /// loop over whole-byte tiles. Needs st's runtime (the ops are st's).
    #[default]
    St,
    /// `com.microsoft.MatMulNBits` with f32 scales (ORT's MLAS kernels; ties the scale type to the
    /// activations'): runs in any ONNX Runtime, not only st's.
    NBits,
}

impl std::fmt::Display for Int4Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Int4Op::St => "st",
            Int4Op::NBits => "nbits",
        })
    }
}

impl std::str::FromStr for Int4Op {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "st" => Ok(Int4Op::St),
            "nbits" => Ok(Int4Op::NBits),
            _ => Err(format!("{s:?} is not an int4 operator (st or nbits)")),
        }
    }
}

impl Default for LinearOptions {
    fn default() -> Self {
        Self {
            int4: NBitsScheme::default(),
            lm_head: Precision::Fp32,
            int8: NBitsScheme { bits: 8, block: 32, symmetric: true },
            accuracy_level: 4,
            fused_ops: false,
            int4_op: Int4Op::St,
            fused_mlp: true,
        }
    }
}

/// A graph under construction plus the checkpoint it reads.
pub struct Builder<'w> {
    pub g: Graph,
    pub weights: &'w Weights,
    pub precision: Precision,
    pub linear: LinearOptions,
    /// Source tensors done / total, and bytes read.
    pub progress: &'w Progress,
    /// Recipe overrides by linear name (first match wins).
    pub overrides: &'w [(globset::GlobMatcher, Precision)],
    /// How the decoder computes attention.
    pub attention: crate::precision::Attention,
    /// The decoder uses ORT's contrib ops that take over its small nodes: GroupQueryAttention rotates q
    /// and k itself (`do_rotary` with this call's M-RoPE rows as its cache) and each residual add is
    /// fused into the RMSNorm after it (`SkipSimplifiedLayerNormalization`). The CPU target, where both
    /// are checked against the explicit forms; only with GroupQueryAttention (`--attention standard`
    /// keeps standard ops).
    pub contrib_fusions: bool,
    /// A LoRA adapter merged into the linears it adapts (`st export --lora`).
    pub lora: Option<&'w st_checkpoint::LoraAdapter>,
}

/// The progress bar: bytes of source tensors read, and tensors done out of the total.
pub struct Progress {
    pub bar: indicatif::ProgressBar,
    done: std::cell::Cell<usize>,
    total: usize,
}

impl Progress {
    pub fn new(bar: indicatif::ProgressBar, total: usize) -> Self {
        bar.set_message(format!("0/{total}"));
        Self { bar, done: std::cell::Cell::new(0), total }
    }

    /// One source tensor of `bytes` bytes written.
    pub fn tensor_done(&self, bytes: usize) {
        self.done.set(self.done.get() + 1);
        self.bar.set_message(format!("{}/{}", self.done.get(), self.total));
        self.bar.inc(bytes as u64);
    }
}

/// How [`Builder::matmul_nbits`] lays out several parts' columns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pack {
    /// One after another (q/k/v; a single linear).
    Concat,
    /// Two (gate, up) in alternating column tiles, the op writing silu(gate) · up.
    SwiGlu,
}

/// One HF linear of a (possibly packed) quantized linear: its weight's name, module prefix and [N, K].
struct Part {
    weight: String,
    prefix: String,
    n: usize,
    k: usize,
}

/// Elements converted to f32 at a time by the row-wise quantizers (16 M = 64 MB).
const CHUNK_ELEMENTS: usize = 16 << 20;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl<'w> Builder<'w> {
    /// A weight as stored, converted to f32 and streamed to the data file; `shape` overrides
    /// the stored shape (same element count), e.g. the Conv3d patch embedding as a matrix.
    pub fn weight_f32_as(&mut self, name: &str, onnx_name: &str, shape: Option<&[usize]>) -> Result<String> {
        let t = self.source(name)?;
        let shape = shape.unwrap_or(t.shape()).to_vec();
        let len = t.numel() as u64 * 4;
        let out = self.g.weight_with(onnx_name, DataType::Float, &shape, len, |w| t.write_f32_le(w))?;
        self.weights.release(name);
        self.progress.tensor_done(t.source_bytes());
        Ok(out)
    }

    /// The tensor `name` as stored, or merged with its LoRA adapter when one adapts it.
    pub fn source(&self, name: &str) -> Result<crate::lora::Source<'w>> {
        let t = self.weights.get(name)?;
        let module = name.strip_suffix(".weight").unwrap_or(name);
        match self.lora.map(|a| crate::lora::merge(&t, a, module)).transpose()?.flatten() {
            Some(values) => Ok(crate::lora::Source::Merged { base: t, values }),
            None => Ok(crate::lora::Source::Mapped(t)),
        }
    }

    /// A weight as stored (same shape and name), converted to f32.
    pub fn weight_f32(&mut self, name: &str) -> Result<String> {
        self.weight_f32_as(name, name, None)
    }

    /// (N, K) of a linear weight stored [N, K] (or with trailing dims, flattened into K).
    fn matrix_shape(&self, weight: &str) -> Result<(usize, usize)> {
        let t = self.weights.get(weight)?;
        match t.shape.split_first() {
            Some((&n, rest)) if !rest.is_empty() && n > 0 => Ok((n, rest.iter().product())),
            _ => Err(Error::Checkpoint(st_checkpoint::Error::ShapeMismatch {
                path: t.path.to_path_buf(),
                name: weight.to_string(),
                expected: vec![0, 0],
                found: t.shape.to_vec(),
            })),
        }
    }

    /// y = x · Wᵀ (+ b) with W kept in HF's [N, K] layout: `Gemm(transB = 1)` over x flattened
    /// to [rows, K], reshaped back to x's leading dims. No transposed copy is ever made.
    fn gemm(&mut self, x: &str, w: &str, prefix: &str, n: usize, k: usize, bias: bool) -> Result<String> {
        let flat = self.g.const_i64(&format!("{prefix}/flat_shape"), &[-1, k as i64], &[2]);
        let x2 = self.g.node(&format!("{prefix}/Flatten"), "Reshape", &[x, &flat], &[]);
        let mut inputs = vec![x2, w.to_string()];
        if bias {
            inputs.push(self.weight_f32(&format!("{prefix}.bias"))?);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.g.node(&format!("{prefix}/Gemm"), "Gemm", &refs, &[("transB", Attr::Int(1))]);
        let lead = self.g.node(&format!("{prefix}/LeadingDims"), "Shape", &[x], &[("end", Attr::Int(-1))]);
        let n_const = self.g.const_i64(&format!("{prefix}/n"), &[n as i64], &[1]);
        let shape = self.g.node(&format!("{prefix}/OutShape"), "Concat", &[&lead, &n_const], &[("axis", Attr::Int(0))]);
        Ok(self.g.node(&format!("{prefix}/Unflatten"), "Reshape", &[&y, &shape], &[]))
    }

    /// RMSNorm over the last axis: x · 1/√(mean(x²) + eps) · weight.
    pub fn rms_norm(&mut self, x: &str, weight: &str, eps: f64, name: &str) -> Result<String> {
        let w = self.weight_f32(weight)?;
        let two = self.g.const_f32(&format!("{name}/two"), &[2.0], &[]);
        let eps = self.g.const_f32(&format!("{name}/eps"), &[eps as f32], &[]);
        let axes = self.g.const_i64(&format!("{name}/axes"), &[-1], &[1]);
        let sq = self.g.node(&format!("{name}/Pow"), "Pow", &[x, &two], &[]);
        let mean =
            self.g.node(&format!("{name}/ReduceMean"), "ReduceMean", &[&sq, &axes], &[("keepdims", Attr::Int(1))]);
        let var = self.g.node(&format!("{name}/AddEps"), "Add", &[&mean, &eps], &[]);
        let std = self.g.node(&format!("{name}/Sqrt"), "Sqrt", &[&var], &[]);
        let normed = self.g.node(&format!("{name}/Div"), "Div", &[x, &std], &[]);
        Ok(self.g.node(&format!("{name}/MulWeight"), "Mul", &[&normed, &w], &[]))
    }

    /// RMSNorm of `x + skip` with the residual sum kept: `com.microsoft.SkipSimplifiedLayerNormalization`
    /// (one node for the residual add and the norm). Returns (normed, x + skip).
    pub fn skip_rms_norm(
        &mut self,
        x: &str,
        skip: &str,
        weight: &str,
        eps: f64,
        name: &str,
    ) -> Result<(String, String)> {
        let w = self.weight_f32(weight)?;
        let out = self.g.node_n(
            &format!("{name}/SkipSimplifiedLayerNormalization"),
            "SkipSimplifiedLayerNormalization",
            crate::graph::MS_DOMAIN,
            &[x, skip, &w],
            &[("epsilon", Attr::Float(eps as f32))],
            4,
        );
        Ok((out[0].clone(), out[3].clone()))
    }

    /// `x · Wᵀ (+ b)` for the HF linear `prefix`, at the builder's precision.
    pub fn linear(&mut self, x: &str, prefix: &str, bias: bool) -> Result<String> {
        self.linear_from(x, &format!("{prefix}.weight"), prefix, bias)
    }

    /// Linear whose weight is the tensor `weight` (e.g. tied embeddings for lm_head), at the
    /// builder's precision.
    pub fn linear_from(&mut self, x: &str, weight: &str, prefix: &str, bias: bool) -> Result<String> {
        self.linear_at(x, weight, prefix, bias, self.precision)
    }

    /// The precision of the linear `prefix`: the first recipe override matching it, else `default`.
    fn precision_of(&self, prefix: &str, default: Precision) -> Result<Precision> {
        match self.overrides.iter().find(|(g, _)| g.is_match(prefix)) {
            Some(&(_, p)) => {
                if prefix.starts_with("visual.") && !matches!(p, Precision::Fp32 | Precision::Fp16) {
                    return Err(Error::InvalidOption {
                        name: "override",
                        reason: format!(
                            "{prefix}: the vision tower stays at fp16 or fp32 (docs/FORMATS.md#precisions), not {p}"
                        ),
                    });
                }
                Ok(p)
            }
            None => Ok(default),
        }
    }

    /// One quantized linear computing the HF linears `prefixes` (same input, outputs concatenated in
    /// that order), named `name`: e.g. q/k/v as one `qkv_proj` whose output GroupQueryAttention takes
    /// packed. Each output column is quantized on its own, so the packed weight holds exactly the bytes of
    /// the separate ones and computes the same values; one call streams them instead of three (the
    /// small k/v calls stream at about half the bandwidth of the large ones, docs/PERFORMANCE.md).
    /// `None` (nothing written) where they cannot be one node: different precisions (a recipe
    /// override), a precision without a packed form (fp32, fp16, fp8), different input widths, or column
    /// tiles that a part's width does not fill; for [`Pack::SwiGlu`] also where the parts are not st's tiles
    /// of one width, or have a bias.
    pub fn linear_packed(
        &mut self,
        x: &str,
        prefixes: &[&str],
        name: &str,
        bias: bool,
        pack: Pack,
    ) -> Result<Option<String>> {
        let mut precisions = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            precisions.push(self.precision_of(p, self.precision)?);
        }
        let scheme = match precisions[..] {
            [first, ref rest @ ..] if rest.iter().all(|&p| p == first) => match first {
                Precision::Int4 => self.linear.int4,
                Precision::Int8 => self.linear.int8,
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut parts = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            let weight = format!("{p}.weight");
            let (n, k) = self.matrix_shape(&weight)?;
            parts.push(Part { weight, prefix: p.to_string(), n, k });
        }
        if parts.iter().any(|p| p.k != parts[0].k) {
            return Ok(None);
        }
        if self.tiled(scheme) && parts.iter().any(|p| !p.n.is_multiple_of(TILE)) {
            return Ok(None);
        }
        if pack == Pack::SwiGlu && (bias || !self.tiled(scheme) || parts.iter().any(|p| p.n != parts[0].n)) {
            return Ok(None);
        }
        let (y, bias_taken) = self.matmul_nbits(x, &parts, name, scheme, bias, pack)?;
        if bias && !bias_taken {
            let b = self.bias_f32(&parts, name)?;
            return Ok(Some(self.g.node(&format!("{name}/AddBias"), "Add", &[&y, &b], &[])));
        }
        Ok(Some(y))
    }

    /// silu(gate(x)) · up(x) as one `ai.st.MatMulInt4` (`MatMulInt8` for 8-bit weights) with `activation` =
    /// "swiglu" over the two projections' tiles in alternation (st_kernels::cpu::swiglu_pairs); `None`
    /// (nothing written) where the option is off, there is a bias, or the two are not st's tiles (int4, or
    /// int8 with int8 activations) of one precision and shape filling whole tiles.
    fn gate_up_swiglu(&mut self, x: &str, prefix: &str, bias: bool) -> Result<Option<String>> {
        if !self.linear.fused_mlp {
            return Ok(None);
        }
        let [gate, up] = [format!("{prefix}.gate_proj"), format!("{prefix}.up_proj")];
        self.linear_packed(x, &[&gate, &up], &format!("{prefix}.gate_up_proj"), bias, Pack::SwiGlu)
    }

    /// The biases of `parts` as one f32 initializer `{name}.bias`, in the parts' order.
    fn bias_f32(&mut self, parts: &[Part], name: &str) -> Result<String> {
        if let [one] = parts {
            return self.weight_f32_as(&format!("{}.bias", one.prefix), &format!("{name}.bias"), None);
        }
        let mut sources = Vec::with_capacity(parts.len());
        for p in parts {
            sources.push((format!("{}.bias", p.prefix), self.source(&format!("{}.bias", p.prefix))?));
        }
        let n: usize = sources.iter().map(|(_, t)| t.numel()).sum();
        let out = self.g.weight_with(&format!("{name}.bias"), DataType::Float, &[n], n as u64 * 4, |w| {
            sources.iter().try_for_each(|(_, t)| t.write_f32_le(w))
        })?;
        for (bias, t) in &sources {
            self.weights.release(bias);
            self.progress.tensor_done(t.source_bytes());
        }
        Ok(out)
    }

    /// Whether linears of `scheme` are written for st's CPU ops (f16 scales) and whether in column
    /// tiles (int8 activations): 4-bit ones as `ai.st.MatMulInt4`, 8-bit ones (lm_head) as
    /// `ai.st.MatMulInt8`, which exists in tiles only (at another accuracy_level they stay MatMulNBits).
    fn st_cpu(&self, scheme: NBitsScheme) -> bool {
        let bits = scheme.bits == 4 || (scheme.bits == 8 && self.linear.accuracy_level == 4);
        bits && !self.linear.fused_ops && self.linear.int4_op == Int4Op::St
    }

    fn tiled(&self, scheme: NBitsScheme) -> bool {
        self.st_cpu(scheme) && self.linear.accuracy_level == 4
    }

    /// Linear at an explicit precision (lm_head and vision keep theirs whatever the text's).
    pub fn linear_at(
        &mut self,
        x: &str,
        weight: &str,
        prefix: &str,
        bias: bool,
        precision: Precision,
    ) -> Result<String> {
        let precision = self.precision_of(prefix, precision)?;
        match precision {
            Precision::Fp32 => {
                let (n, k) = self.matrix_shape(weight)?;
                let w = self.weight_f32_as(weight, &format!("{prefix}.weight"), Some(&[n, k]))?;
                self.gemm(x, &w, prefix, n, k, bias)
            }
            Precision::Fp16 => {
                // fp16 storage, f32 compute: half the bytes on disk; GPU providers run the Cast
                // into their fp16 kernels, ORT's CPU provider folds it into an f32 copy at load.
                let (n, k) = self.matrix_shape(weight)?;
                let t = self.source(weight)?;
                let w = self.g.weight_with(
                    &format!("{prefix}.weight_fp16"),
                    DataType::Float16,
                    &[n, k],
                    t.numel() as u64 * 2,
                    |w| t.write_f16_le(w),
                )?;
                self.weights.release(weight);
                self.progress.tensor_done(t.source_bytes());
                let w = self.g.node(
                    &format!("{prefix}/CastWeight"),
                    "Cast",
                    &[&w],
                    &[("to", Attr::Int(DataType::Float as i64))],
                );
                self.gemm(x, &w, prefix, n, k, bias)
            }
            Precision::Int4 | Precision::Int8 => {
                let scheme = if precision == Precision::Int4 { self.linear.int4 } else { self.linear.int8 };
                let (n, k) = self.matrix_shape(weight)?;
                let part = Part { weight: weight.to_string(), prefix: prefix.to_string(), n, k };
                let (y, bias_taken) = self.matmul_nbits(x, &[part], prefix, scheme, bias, Pack::Concat)?;
                self.add_bias(y, prefix, bias && !bias_taken)
            }
            Precision::Fp8 => {
                // E4M3FN + per-channel scales as DequantizeLinear → Gemm: the Q/DQ form TensorRT
                // fuses. ORT's CPU provider folds it to f32 at load (4× memory): on CPU this is for
                // correctness on small models until the fused op of the kernels issue exists.
                let (n, k) = self.matrix_shape(weight)?;
                let t = self.source(weight)?;
                let q = fp8::quantize_per_channel(&t.to_f32()?, n, k);
                self.weights.release(weight);
                self.progress.tensor_done(t.source_bytes());
                let scale =
                    self.g.weight(&format!("{prefix}.weight_scale"), DataType::Float, &[n], &f32_bytes(&q.scales))?;
                if self.linear.fused_ops {
                    // The same bytes as uint8 for ai.st.MatMulFp8 (dequantized inside the matmul).
                    let data = self.g.weight(&format!("{prefix}.weight_fp8"), DataType::Uint8, &[n, k], &q.data)?;
                    let attrs = [("K", Attr::Int(k as i64)), ("N", Attr::Int(n as i64)), ("block_size", Attr::Int(0))];
                    let y = self
                        .g
                        .node_n(
                            &format!("{prefix}/MatMulFp8"),
                            "MatMulFp8",
                            crate::graph::ST_DOMAIN,
                            &[x, &data, &scale],
                            &attrs,
                            1,
                        )
                        .remove(0);
                    return self.add_bias(y, prefix, bias);
                }
                let data = self.g.weight(&format!("{prefix}.weight_fp8"), DataType::Float8e4m3fn, &[n, k], &q.data)?;
                let w = self.g.node(
                    &format!("{prefix}/DequantizeWeight"),
                    "DequantizeLinear",
                    &[&data, &scale],
                    &[("axis", Attr::Int(0))],
                );
                self.gemm(x, &w, prefix, n, k, bias)
            }
        }
    }

    fn add_bias(&mut self, y: String, prefix: &str, bias: bool) -> Result<String> {
        if !bias {
            return Ok(y);
        }
        let b = self.weight_f32(&format!("{prefix}.bias"))?;
        Ok(self.g.node(&format!("{prefix}/AddBias"), "Add", &[&y, &b], &[]))
    }

    /// `com.microsoft.MatMulNBits` (4 bits) over the block-quantized weight, or st's `ai.st.MatMulInt4`;
    /// several `parts` (same K) are one weight of their rows in order, the node and its tensors named
    /// `prefix`. st's op on the CPU adds the layers' biases itself when `bias` (one node less per biased
    /// linear); returns the output and whether it did.
    fn matmul_nbits(
        &mut self,
        x: &str,
        parts: &[Part],
        prefix: &str,
        scheme: NBitsScheme,
        bias: bool,
        pack: Pack,
    ) -> Result<(String, bool)> {
        let n: usize = parts.iter().map(|p| p.n).sum();
        let k = parts.first().map_or(0, |p| p.k);
        let block = scheme.block;
        if !(block >= 16 && block.is_power_of_two()) {
            return Err(Error::InvalidOption {
                name: "int4 block size",
                reason: format!("{block} is not a power of two ≥ 16"),
            });
        }
        // ai.st.MatMulInt4 on the CPU keeps the scales in f16 (the quantizer rounds them to f16
        // already, so this loses nothing); with int8 activations it takes the weights in column tiles
        // (st_kernels::cpu::tiles: the decode GEMV and the prefill GEMM of st's int8 loop).
        let st_cpu = self.st_cpu(scheme);
        if st_cpu && !matches!(self.linear.accuracy_level, 0 | 4) {
            return Err(Error::InvalidOption {
                name: "accuracy_level",
                reason: format!(
                    "{} with ai.st.MatMulInt4 (0 = f32, 4 = int8 activations; 1–3 need --int4-op nbits)",
                    self.linear.accuracy_level
                ),
            });
        }
        let tiled = self.tiled(scheme);
        if st_cpu && block < 32 {
            return Err(Error::InvalidOption {
                name: "int4 block size",
                reason: format!("{block} with st's CPU ops (32, 64, 128 or 256; --int4-op nbits takes 16)"),
            });
        }
        let mut sources = Vec::with_capacity(parts.len());
        for p in parts {
            sources.push(self.source(&p.weight)?);
        }
        // Rows are independent: quantize and write them a chunk at a time (bounded memory even
        // for a 152k-row lm_head), part after part; scales and zero points are small and written
        // after. Tiles take whole groups of TILE rows (a packed weight's parts fill whole tiles).
        let kb = k.div_ceil(block);
        let blob = block * scheme.bits as usize / 8;
        let shape = st_kernels::Int4Layout { n, k, block, zero_points: !scheme.symmetric };
        let tiles = match scheme.bits {
            8 => st_kernels::cpu::TileLayout::int8(shape),
            _ => st_kernels::cpu::TileLayout::int4(shape),
        };
        let chunk = match tiled {
            true => ((CHUNK_ELEMENTS / k.max(1)) / TILE * TILE).max(TILE),
            false => (CHUNK_ELEMENTS / k.max(1)).max(1),
        };
        let b_len = if tiled { tiles.b_len() } else { n * kb * blob };
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let mut scales = Vec::with_capacity(n * kb);
        let mut zero_points = Vec::new();
        let mut failure = None;
        // What one step quantizes and writes: a chunk of one part's rows, or (SwiGLU) the same rows of
        // both parts, their tiles then interleaved.
        let jobs: Vec<Vec<(usize, usize, &crate::lora::Source<'_>)>> = match pack {
            Pack::Concat => parts
                .iter()
                .zip(&sources)
                .flat_map(|(p, t)| (0..p.n).step_by(chunk).map(move |r0| vec![(r0, (r0 + chunk).min(p.n), t)]))
                .collect(),
            Pack::SwiGlu => (0..parts.first().map_or(0, |p| p.n))
                .step_by(chunk)
                .map(|r0| sources.iter().map(|t| (r0, (r0 + chunk).min(parts[0].n), t)).collect())
                .collect(),
        };
        let b = self.g.weight_with(
            &format!("{prefix}.weight_q{}{}", scheme.bits, if tiled { "_tiles" } else { "" }),
            DataType::Uint8,
            &if tiled { vec![tiles.tiles(), tiles.tile_bytes()] } else { vec![n, kb, blob] },
            b_len as u64,
            |w| {
                for job in &jobs {
                    let mut tiled_rows = Vec::with_capacity(job.len());
                    for &(r0, r1, t) in job {
                        let rows = match t.rows_f32(r0..r1) {
                            Ok(rows) => rows,
                            Err(e) => {
                                failure = Some(e);
                                return Err(std::io::Error::other("source tensor unreadable"));
                            }
                        };
                        let q = nbits::quantize_parallel(&rows, r1 - r0, k, scheme, threads);
                        if tiled {
                            let layout =
                                st_kernels::Int4Layout { n: r1 - r0, k, block, zero_points: !scheme.symmetric };
                            let t = if scheme.bits == 8 {
                                st_kernels::cpu::tile_int8(layout, &q.packed, &q.scales, q.zero_points.as_deref())
                            } else {
                                let rows = st_kernels::Int4Weights {
                                    layout,
                                    b: &q.packed,
                                    scales: &q.scales,
                                    zero_points: q.zero_points.as_deref(),
                                };
                                st_kernels::cpu::tile(&rows)
                            };
                            tiled_rows.push(t.map_err(std::io::Error::other)?);
                            continue;
                        }
                        w.write_all(&q.packed)?;
                        scales.extend_from_slice(&q.scales);
                        if let Some(z) = q.zero_points {
                            zero_points.extend_from_slice(&z);
                        }
                    }
                    let pairs;
                    let t = match tiled_rows.as_slice() {
                        [] => continue,
                        [gate, up] if pack == Pack::SwiGlu => {
                            pairs = st_kernels::cpu::swiglu_pairs(gate, up).map_err(std::io::Error::other)?;
                            &pairs
                        }
                        [one] => one,
                        _ => return Err(std::io::Error::other("a packing step of unexpected parts")),
                    };
                    w.write_all(&t.b)?;
                    scales.extend_from_slice(&t.scales);
                    zero_points.extend_from_slice(t.zero_points.as_deref().unwrap_or_default());
                }
                Ok(())
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        let b = b?;
        for (p, t) in parts.iter().zip(&sources) {
            self.weights.release(&p.weight);
            self.progress.tensor_done(t.source_bytes());
        }
        let s = if st_cpu {
            let h: Vec<u8> = scales.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            self.g.weight(&format!("{prefix}.weight_scales_f16"), DataType::Float16, &[scales.len()], &h)?
        } else {
            self.g.weight(&format!("{prefix}.weight_scales"), DataType::Float, &[n * kb], &f32_bytes(&scales))?
        };
        let mut inputs = vec![x.to_string(), b, s];
        if !scheme.symmetric {
            let name = format!("{prefix}.weight_zero_points");
            inputs.push(self.g.weight(&name, DataType::Uint8, &[zero_points.len()], &zero_points)?);
        }
        let bias_taken = bias && st_cpu;
        if bias_taken {
            // Optional inputs are positional: an empty name stands for absent zero points.
            if scheme.symmetric {
                inputs.push(String::new());
            }
            inputs.push(self.bias_f32(parts, prefix)?);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        if (self.linear.fused_ops && scheme.bits == 4) || st_cpu {
            // ai.st.MatMulInt4 / MatMulInt8 read MatMulNBits' inputs as they are (scales in f16 on the CPU).
            let mut attrs =
                vec![("K", Attr::Int(k as i64)), ("N", Attr::Int(n as i64)), ("block_size", Attr::Int(block as i64))];
            if st_cpu {
                attrs.push(("accuracy_level", Attr::Int(self.linear.accuracy_level)));
            }
            if tiled {
                attrs.push(("tile", Attr::Int(TILE as i64)));
            }
            if pack == Pack::SwiGlu {
                attrs.push(("activation", Attr::Str("swiglu")));
            }
            let op = if scheme.bits == 8 { "MatMulInt8" } else { "MatMulInt4" };
            let y = self.g.node_n(&format!("{prefix}/{op}"), op, crate::graph::ST_DOMAIN, &refs, &attrs, 1).remove(0);
            return Ok((y, bias_taken));
        }
        let attrs = [
            ("K", Attr::Int(k as i64)),
            ("N", Attr::Int(n as i64)),
            ("bits", Attr::Int(scheme.bits as i64)),
            ("block_size", Attr::Int(block as i64)),
            ("accuracy_level", Attr::Int(self.linear.accuracy_level)),
        ];
        let y = self
            .g
            .node_n(&format!("{prefix}/MatMulNBits"), "MatMulNBits", crate::graph::MS_DOMAIN, &refs, &attrs, 1)
            .remove(0);
        Ok((y, false))
    }

    /// HF `apply_rotary_pos_emb`: x·cos + rotate_half(x)·sin, over the last axis of size `dim`.
    pub fn rotary(&mut self, x: &str, cos: &str, sin: &str, dim: usize, name: &str) -> String {
        let half = (dim / 2) as i64;
        let axes = self.g.const_i64(&format!("{name}/axes"), &[-1], &[1]);
        let s0 = self.g.const_i64(&format!("{name}/s0"), &[0], &[1]);
        let s1 = self.g.const_i64(&format!("{name}/s1"), &[half], &[1]);
        let s2 = self.g.const_i64(&format!("{name}/s2"), &[2 * half], &[1]);
        let x1 = self.g.node(&format!("{name}/SliceLo"), "Slice", &[x, &s0, &s1, &axes], &[]);
        let x2 = self.g.node(&format!("{name}/SliceHi"), "Slice", &[x, &s1, &s2, &axes], &[]);
        let neg = self.g.node(&format!("{name}/Neg"), "Neg", &[&x2], &[]);
        let rot = self.g.node(&format!("{name}/RotateHalf"), "Concat", &[&neg, &x1], &[("axis", Attr::Int(-1))]);
        let a = self.g.node(&format!("{name}/MulCos"), "Mul", &[x, cos], &[]);
        let b = self.g.node(&format!("{name}/MulSin"), "Mul", &[&rot, sin], &[]);
        self.g.node(&format!("{name}/Add"), "Add", &[&a, &b], &[])
    }

    /// SwiGLU MLP: down(silu(gate(x)) · up(x)); gate, up and the product as one node where
    /// [`LinearOptions::fused_mlp`] allows.
    pub fn mlp(&mut self, x: &str, prefix: &str, bias: bool) -> Result<String> {
        if let Some(prod) = self.gate_up_swiglu(x, prefix, bias)? {
            return self.linear(&prod, &format!("{prefix}.down_proj"), bias);
        }
        let gate = self.linear(x, &format!("{prefix}.gate_proj"), bias)?;
        let up = self.linear(x, &format!("{prefix}.up_proj"), bias)?;
        let sig = self.g.node(&format!("{prefix}/Sigmoid"), "Sigmoid", &[&gate], &[]);
        let silu = self.g.node(&format!("{prefix}/SiLU"), "Mul", &[&gate, &sig], &[]);
        let prod = self.g.node(&format!("{prefix}/MulUp"), "Mul", &[&silu, &up], &[]);
        self.linear(&prod, &format!("{prefix}.down_proj"), bias)
    }
}

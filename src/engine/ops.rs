//! st's ONNX Runtime custom operators (domain [`DOMAIN`]), the fused weight-only matmuls that
//! `st export --target cuda` writes for the quantized linears:
//!
//! - `ai.st.MatMulInt4(A, B, scales[, zero_points][, bias])`, attributes `K`, `N`, `block_size` and optional
//!   `accuracy_level`: MatMulNBits' inputs and layout (bits = 4), with scales in f32 (as MatMulNBits
//!   takes them with f32 activations) or f16 (an eighth fewer bytes per weight at block 32; registered
//!   as a second kernel of the same name). `accuracy_level` 4 quantizes the activations to int8 per
//!   group of 32 and runs the integer loop (`st_kernels::cpu::int8`); 0 or absent runs the f32 loop.
//!   With `tile` = 16 (and accuracy_level 4) B, scales and zero points are in column tiles
//!   (`st_kernels::cpu::tiles`, what `st export --int4-op st` writes for the CPU): the same loop's GEMV
//!   and GEMM. The CUDA kernels take f32 scales and MatMulNBits' layout only.
//! - `ai.st.MatMulInt8(A, B, scales[, zero_points][, bias])`: the same with 8-bit weights (MatMulNBits'
//!   `bits` = 8; zero point 128 when absent), in column tiles with int8 activations only (`tile` = 16,
//!   `accuracy_level` 4): the int8 lm_head of a CPU export, read in place where MLAS would prepack a copy.
//! - `ai.st.MatMulFp8(A, W, scales)`, attributes `K`, `N`, `block_size` (0 = per-channel scales):
//!   `W` is `[N, K]` E4M3FN bytes (stored as uint8), scales `[N]` or `[N, ceil(K / block_size)]`.
//! - `ai.st.GroupQueryAttention`: `com.microsoft.GroupQueryAttention`'s inputs and outputs for the CPU
//!   decoder `st export` writes (rotary from the cos/sin cache, KV cache appended in place), computed per
//!   KV head by [`st_kernels::cpu::attention`] ([`GroupQueryAttention`]).
//!
//! `Y[..., N] = A[..., K] · Wᵀ`. This file registers the CPU implementation for f32 activations
//! ([`st_kernels::cpu`]: dequantization inside the matmul loop, AVX-512 where the CPU has it, ORT's
//! thread pool). The CUDA kernels (`kernels/`, launched through [`st_kernels::cuda`]) take fp16/bf16
//! activations; running them inside ORT's CUDA provider needs a graph with fp16 activations, which the
//! exporter does not write yet (see docs/KERNELS.md).

use crate::error::{Error, Result};
use ort::memory::MemoryType;
use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;
use st_kernels::{Fp8Layout, Fp8Scales, Fp8Weights, Int4Layout, Int4Weights, cpu};

/// The custom-op domain.
pub const DOMAIN: &str = "ai.st";

/// Hold this while committing a session built with [`domain`] / [`domain_for`]: ONNX Runtime adds a
/// custom domain to a process-wide schema map when a session is created, and two sessions doing so at
/// once fail with "the domain is already exist" (seen with parallel tests).
pub fn commit_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The variable that caps st's CPU kernels at a smaller CPU's builds (`portable`, `avx2`, `avxvnni`,
/// `avx512`: `st_kernels::cpu::ceiling`), process-wide; unset or empty, they run the best this CPU has.
pub const CPU_ISA_VAR: &str = "ST_CPU_ISA";

/// Applies [`CPU_ISA_VAR`] when it is set (read at each session's creation, so a misspelt value or a
/// build this CPU lacks is an error at load); unset, the ceiling stays as the API left it.
pub fn apply_cpu_isa_var() -> Result<()> {
    let bad = |reason: String| Error::InvalidArgument { name: CPU_ISA_VAR, reason };
    let value = match std::env::var(CPU_ISA_VAR) {
        Ok(v) if !v.trim().is_empty() => v,
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(()),
        Err(std::env::VarError::NotUnicode(v)) => return Err(bad(format!("{v:?} is not UTF-8"))),
    };
    let ceiling = cpu::BuildCeiling::parse(&value, CPU_ISA_VAR)
        .map_err(|_| bad(format!("{value:?}: expected one of {}", cpu::BuildCeiling::NAMES)))?;
    cpu::set_build_ceiling(Some(ceiling)).map_err(|e| bad(e.to_string()))
}

/// The builds st's CPU kernels run now (after any ceiling): e.g. "tiles Avx2, attention Avx2, dequant loop
/// Avx2Fma (ST_CPU_ISA=Avx2)", for `st doctor` and `st bench`'s host record.
pub fn cpu_builds() -> String {
    let ceiling = match cpu::build_ceiling() {
        Some(c) => format!("{CPU_ISA_VAR}={c:?}"),
        None => format!("the best this CPU runs; {CPU_ISA_VAR} unset"),
    };
    format!(
        "tiles {:?}, attention {:?}, dequant loop {:?} ({ceiling})",
        cpu::int8_isa(),
        cpu::AttentionBuild::best(),
        cpu::isa()
    )
}

/// The domain with both operators, for `SessionBuilder::with_operators`.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(MatMulInt4::F32)?
        .add(MatMulInt4::F16)?
        .add(MatMulInt4::INT8_F32)?
        .add(MatMulInt4::INT8_F16)?
        .add(MatMulFp8)?
        .add(GroupQueryAttention)
}

fn attr(kctx: &KernelContext<'_>, op: &str, name: &str) -> ort::Result<usize> {
    let v: i64 = kctx.get(name).ok_or_else(|| ort::Error::new(format!("{op}: attribute {name} missing")))?;
    usize::try_from(v).map_err(|_| ort::Error::new(format!("{op}: attribute {name} = {v} is negative")))
}

/// Runs st-kernels' CPU tasks on ORT's intra-op thread pool.
struct OrtPool<'a>(&'a ComputeContext);
impl cpu::Parallel for OrtPool<'_> {
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.0.par_for(tasks, tasks, f).is_err() {
            cpu::Serial.run(tasks, f);
        }
    }
}

fn kernel_err(op: &str, e: st_kernels::Error) -> ort::Error {
    ort::Error::new(format!("{op}: {e}"))
}

/// Reads A, allocates Y = A's shape with the last axis K replaced by N, runs `f` into it and adds the
/// bias (`[N]`) to every row.
fn run_matmul(
    ctx: &ComputeContext,
    op: &str,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    f: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<(), st_kernels::Error>,
) -> ort::Result<()> {
    if let Some(b) = bias
        && b.len() != n
    {
        return Err(ort::Error::new(format!("{op}: bias has {} elements, expected N = {n}", b.len())));
    }
    let a = ctx.input(0)?.ok_or_else(|| ort::Error::new(format!("{op}: input A missing")))?;
    let (shape, a) = a.try_extract_tensor::<f32>()?;
    let dims = dims_of(shape);
    if dims.last().copied() != Some(k as i64) {
        return Err(ort::Error::new(format!("{op}: A has shape {dims:?}, expected [..., {k}]")));
    }
    let m = a.len() / k.max(1);
    let mut out_dims = dims.clone();
    if let Some(last) = out_dims.last_mut() {
        *last = n as i64;
    }
    let mut y = ctx.output(0, out_dims)?.ok_or_else(|| ort::Error::new(format!("{op}: output Y missing")))?;
    let (_, y) = y.try_extract_tensor_mut::<f32>()?;
    if m == 0 {
        return Ok(());
    }
    f(a, m, y).map_err(|e| kernel_err(op, e))?;
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
    Ok(())
}

fn u8_input<'a>(ctx: &'a ComputeContext, idx: usize, op: &str, what: &str) -> ort::Result<ort::value::ValueRef<'a>> {
    ctx.input(idx)?.ok_or_else(|| ort::Error::new(format!("{op}: input {what} missing")))
}

/// `ai.st.MatMulInt4` on the CPU, one registration per scale type; and `ai.st.MatMulInt8`, its 8-bit
/// form (MatMulNBits' `bits` = 8 inputs, zero point 128 when absent), column tiles with int8 activations
/// only (`tile` = 16, `accuracy_level` 4: what `st export` writes for an int8 lm_head on the CPU).
#[derive(Clone, Copy)]
pub struct MatMulInt4 {
    f16_scales: bool,
    bits8: bool,
}
impl MatMulInt4 {
    pub const F32: MatMulInt4 = MatMulInt4 { f16_scales: false, bits8: false };
    pub const F16: MatMulInt4 = MatMulInt4 { f16_scales: true, bits8: false };
    pub const INT8_F32: MatMulInt4 = MatMulInt4 { f16_scales: false, bits8: true };
    pub const INT8_F16: MatMulInt4 = MatMulInt4 { f16_scales: true, bits8: true };
    fn op(&self) -> &'static str {
        if self.bits8 { "MatMulInt8" } else { "MatMulInt4" }
    }
}
#[derive(Clone, Copy)]
pub struct Int4Kernel {
    k: usize,
    n: usize,
    block: usize,
    /// accuracy_level 4: int8 activations.
    int8: bool,
    f16_scales: bool,
    /// The weights in column tiles (attribute `tile` = 16; st_kernels::cpu::tiles), not MatMulNBits' rows.
    tiled: bool,
    /// 8-bit weights (`ai.st.MatMulInt8`; always tiled).
    bits8: bool,
    /// `activation` = "swiglu": the tiles alternate an MLP's gate and up projection and Y is
    /// silu(gate) · up, `[..., N / 2]` (st_kernels::cpu::int4_tiles_swiglu_int8; 4- or 8-bit tiles).
    swiglu: bool,
}

impl Operator for MatMulInt4 {
    type Kernel<'attr> = Int4Kernel;
    fn name(&self) -> &str {
        self.op()
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let scales = if self.f16_scales { TensorElementType::Float16 } else { TensorElementType::Float32 };
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(scales),
            OperatorInput::optional(TensorElementType::Uint8),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<Int4Kernel> {
        let op = self.op();
        let level: i64 = kctx.get("accuracy_level").unwrap_or(0);
        if !matches!(level, 0 | 4) {
            return Err(ort::Error::new(format!("{op}: accuracy_level {level} (expected 0 = f32 or 4 = int8)")));
        }
        let tile: i64 = kctx.get("tile").unwrap_or(0);
        let tiled = match tile {
            0 => false,
            t if t == cpu::tiles::TILE as i64 && level == 4 => true,
            t => {
                return Err(ort::Error::new(format!(
                    "{op}: tile {t} with accuracy_level {level} (expected 0, or {} with accuracy_level 4)",
                    cpu::tiles::TILE
                )));
            }
        };
        let activation: String = kctx.get("activation").unwrap_or_default();
        let swiglu = match activation.as_str() {
            "" => false,
            "swiglu" if tiled => true,
            other => {
                return Err(ort::Error::new(format!(
                    "{op}: activation \"{other}\" with tile {tile} (expected none, or \"swiglu\" on column tiles: \
                     tile {}, accuracy_level 4)",
                    cpu::tiles::TILE
                )));
            }
        };
        if self.bits8 && !tiled {
            return Err(ort::Error::new(format!(
                "{op}: tile {tile}, accuracy_level {level} (8-bit weights run in column tiles only: tile {}, \
                 accuracy_level 4)",
                cpu::tiles::TILE
            )));
        }
        Ok(Int4Kernel {
            tiled,
            k: attr(kctx, op, "K")?,
            n: attr(kctx, op, "N")?,
            block: attr(kctx, op, "block_size")?,
            int8: level == 4,
            f16_scales: self.f16_scales,
            bits8: self.bits8,
            swiglu,
        })
    }
}

impl Int4Kernel {
    fn op(&self) -> &'static str {
        MatMulInt4 { f16_scales: self.f16_scales, bits8: self.bits8 }.op()
    }

    /// The tiled forms: Y = A · Wᵀ (+ bias), or silu(gate) · up over tile pairs.
    fn run_tiles<S: cpu::Int4Scale>(
        &self,
        ctx: &ComputeContext,
        bias: Option<&[f32]>,
        w: cpu::Int4Tiles<'_, S>,
        pool: &OrtPool<'_>,
    ) -> ort::Result<()> {
        let op = self.op();
        if self.swiglu {
            run_matmul(ctx, op, self.k, self.n / 2, None, |a, m, y| cpu::int4_tiles_swiglu_int8(a, m, &w, y, pool))
        } else {
            run_matmul(ctx, op, self.k, self.n, bias, |a, m, y| cpu::int4_tiles_matmul_int8(a, m, &w, y, pool))
        }
    }
}

impl Kernel for Int4Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = self.op();
        let b = u8_input(ctx, 1, op, "B")?;
        let (_, b) = b.try_extract_tensor::<u8>()?;
        let s = u8_input(ctx, 2, op, "scales")?;
        let zp_value = if ctx.num_inputs()? > 3 { ctx.input(3)? } else { None };
        let zp = match &zp_value {
            Some(v) => Some(v.try_extract_tensor::<u8>()?.1),
            None => None,
        };
        let bias_value = if ctx.num_inputs()? > 4 { ctx.input(4)? } else { None };
        let bias = match &bias_value {
            Some(v) => Some(v.try_extract_tensor::<f32>()?.1),
            None => None,
        };
        let layout = Int4Layout { n: self.n, k: self.k, block: self.block, zero_points: zp.is_some() };
        let pool = OrtPool(ctx);
        if self.tiled {
            let layout = if self.bits8 { cpu::TileLayout::int8(layout) } else { cpu::TileLayout::int4(layout) };
            if self.swiglu && bias.is_some() {
                // The bias would go before the activation; st export never writes one here.
                return Err(ort::Error::new(format!("{op}: a bias input with activation \"swiglu\"")));
            }
            return if self.f16_scales {
                let (_, scales) = s.try_extract_tensor::<half::f16>()?;
                self.run_tiles(ctx, bias, cpu::Int4Tiles { layout, b, scales, zero_points: zp }, &pool)
            } else {
                let (_, scales) = s.try_extract_tensor::<f32>()?;
                self.run_tiles(ctx, bias, cpu::Int4Tiles { layout, b, scales, zero_points: zp }, &pool)
            };
        }
        if self.f16_scales {
            let (_, scales) = s.try_extract_tensor::<half::f16>()?;
            let w = Int4Weights { layout, b, scales, zero_points: zp };
            if self.int8 {
                return run_matmul(ctx, op, self.k, self.n, bias, |a, m, y| cpu::int4_matmul_int8(a, m, &w, y, &pool));
            }
            // The f32 loop takes f32 scales: convert this call's (an eighth of the weight bytes).
            let scales: Vec<f32> = scales.iter().map(|v| v.to_f32()).collect();
            let w = Int4Weights { layout, b, scales: &scales, zero_points: zp };
            return run_matmul(ctx, op, self.k, self.n, bias, |a, m, y| cpu::int4_matmul(a, m, &w, y, &pool));
        }
        let (_, scales) = s.try_extract_tensor::<f32>()?;
        let w = Int4Weights { layout, b, scales, zero_points: zp };
        if self.int8 {
            run_matmul(ctx, op, self.k, self.n, bias, |a, m, y| cpu::int4_matmul_int8(a, m, &w, y, &pool))
        } else {
            run_matmul(ctx, op, self.k, self.n, bias, |a, m, y| cpu::int4_matmul(a, m, &w, y, &pool))
        }
    }
}

pub struct MatMulFp8;
pub struct Fp8Kernel {
    k: usize,
    n: usize,
    block: usize,
}

impl Operator for MatMulFp8 {
    type Kernel<'attr> = Fp8Kernel;
    fn name(&self) -> &str {
        "MatMulFp8"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<Fp8Kernel> {
        let op = "MatMulFp8";
        Ok(Fp8Kernel { k: attr(kctx, op, "K")?, n: attr(kctx, op, "N")?, block: attr(kctx, op, "block_size")? })
    }
}

impl Kernel for Fp8Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = "MatMulFp8";
        let wv = u8_input(ctx, 1, op, "W")?;
        let (_, w) = wv.try_extract_tensor::<u8>()?;
        let sv = u8_input(ctx, 2, op, "scales")?;
        let (_, s) = sv.try_extract_tensor::<f32>()?;
        let scales = if self.block == 0 { Fp8Scales::PerChannel } else { Fp8Scales::PerBlock(self.block) };
        let w = Fp8Weights { layout: Fp8Layout { n: self.n, k: self.k, scales }, w, scales: s };
        let pool = OrtPool(ctx);
        run_matmul(ctx, op, self.k, self.n, None, |a, m, y| cpu::fp8_matmul(a, m, &w, y, &pool))
    }
}

/// `ai.st.GroupQueryAttention`: `com.microsoft.GroupQueryAttention`'s inputs, outputs and semantics on
/// the CPU for what `st export` writes (`do_rotary` = 1, non-interleaved, batch 1, f32; packed q/k/v
/// in `query` or separate `key` / `value`), computed per KV head ([`st_kernels::cpu::attention`]).
/// The present holds max(past buffer, total) positions; past and present may be one buffer (bound so
/// by the engine): the new keys and values are then appended in place, otherwise the past's positions
/// are copied into the present first.
pub struct GroupQueryAttention;

pub struct GqaKernel {
    shape: cpu::GqaShape,
}

/// query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
/// position_ids; the two lengths in `lengths` memory (host memory for the CUDA kernel, which reads them
/// before launching).
fn gqa_inputs(lengths: MemoryType) -> [OperatorInput; 10] {
    use TensorElementType::{Float32, Int32, Int64};
    [
        OperatorInput::required(Float32),
        OperatorInput::optional(Float32),
        OperatorInput::optional(Float32),
        OperatorInput::required(Float32),
        OperatorInput::required(Float32),
        OperatorInput::required(Int32).memory_type(lengths),
        OperatorInput::required(Int32).memory_type(lengths),
        OperatorInput::required(Float32),
        OperatorInput::required(Float32),
        OperatorInput::required(Int64),
    ]
}

const GQA: &str = "ai.st.GroupQueryAttention";

impl Operator for GroupQueryAttention {
    type Kernel<'attr> = GqaKernel;
    const INPLACES: &[(u32, u32)] = &[(3, 1), (4, 2)];
    fn name(&self) -> &str {
        "GroupQueryAttention"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        gqa_inputs(MemoryType::Default)
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [TensorElementType::Float32; 3].map(OperatorOutput::required)
    }
    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<GqaKernel> {
        // (attribute, the value st implements, ORT's default when absent)
        for (name, want, default) in
            [("do_rotary", 1, 0), ("rotary_interleaved", 0, 0), ("local_window_size", -1, -1), ("smooth_softmax", 0, 0)]
        {
            let v: i64 = kctx.get(name).unwrap_or(default);
            if v != want {
                return Err(ort::Error::new(format!("{GQA}: attribute {name} = {v} (only {want} is implemented)")));
            }
        }
        let softcap: f32 = kctx.get("softcap").unwrap_or(0.0);
        if softcap != 0.0 {
            return Err(ort::Error::new(format!("{GQA}: attribute softcap = {softcap} (only 0 is implemented)")));
        }
        Ok(GqaKernel {
            shape: cpu::GqaShape {
                heads: attr(kctx, GQA, "num_heads")?,
                kv_heads: attr(kctx, GQA, "kv_num_heads")?,
                head_dim: 0,
                scale: kctx.get("scale").unwrap_or(0.0),
            },
        })
    }
}

fn dims_of(shape: &ort::value::Shape) -> Vec<i64> {
    shape.iter().copied().collect()
}

/// The dims of input `i` (None when the optional input is absent), wherever its data lives.
fn input_dims(ctx: &ComputeContext, i: usize, what: &str) -> ort::Result<Option<Vec<i64>>> {
    let Some(v) = ctx.input(i)? else { return Ok(None) };
    let dims = v.dtype().tensor_shape().ok_or_else(|| ort::Error::new(format!("{GQA}: {what} is not a tensor")))?;
    Ok(Some(dims.iter().copied().collect()))
}

/// One `GroupQueryAttention` call as both kernels (CPU and CUDA) read it: the inputs' dims checked
/// against the node's heads, and the lengths from `seqlens_k` (host memory in both).
struct GqaCall {
    /// The node's heads with this call's head_dim.
    shape: cpu::GqaShape,
    /// New tokens.
    tokens: usize,
    /// The query's columns: q alone, or q, k, v packed.
    width: usize,
    /// k and v packed into the query's rows (key and value absent).
    packed: bool,
    /// Positions the past buffers hold.
    capacity: usize,
    /// Positions after this call (seqlens_k + 1), and before it.
    total: usize,
    past: usize,
    /// Rows of the cos / sin tables.
    rotary_rows: usize,
}

impl GqaCall {
    fn read(ctx: &ComputeContext, node: cpu::GqaShape) -> ort::Result<Self> {
        let need = |i: usize, what: &str| {
            input_dims(ctx, i, what)?.ok_or_else(|| ort::Error::new(format!("{GQA}: input {what} missing")))
        };
        let (h, kvh) = (node.heads, node.kv_heads);
        let pdims = need(3, "past_key")?;
        let &[1, pkvh, capacity, hd] = pdims.as_slice() else {
            return Err(ort::Error::new(format!(
                "{GQA}: past_key has shape {pdims:?}, expected [1, {kvh}, capacity, head_dim] (batch 1)"
            )));
        };
        if pkvh as usize != kvh || hd <= 0 || capacity < 0 || need(4, "past_value")? != pdims {
            return Err(ort::Error::new(format!(
                "{GQA}: past_key {pdims:?} and past_value must both be [1, {kvh}, capacity, head_dim]"
            )));
        }
        let (capacity, hd) = (capacity as usize, hd as usize);
        let qdims = need(0, "query")?;
        let &[1, tokens, width] = qdims.as_slice() else {
            return Err(ort::Error::new(format!(
                "{GQA}: query has shape {qdims:?}, expected [1, tokens, hidden] (batch 1)"
            )));
        };
        let (tokens, width) = (tokens.max(0) as usize, width.max(0) as usize);
        let (qw, kw) = (h * hd, kvh * hd);
        let separate = (input_dims(ctx, 1, "key")?, input_dims(ctx, 2, "value")?);
        let packed = match &separate {
            (Some(kd), Some(vd)) if width == qw && *kd == [1, tokens as i64, kw as i64] && vd == kd => false,
            (None, None) if width == qw + 2 * kw => true,
            _ => {
                return Err(ort::Error::new(format!(
                    "{GQA}: query [1, {tokens}, {width}] with key/value {separate:?}: expected separate [1, tokens, \
                     {kw}] rows beside a query of {qw}, or a packed query of {} and neither",
                    qw + 2 * kw
                )));
            }
        };
        let seqlens = ctx.input(5)?.ok_or_else(|| ort::Error::new(format!("{GQA}: input seqlens_k missing")))?;
        let (_, seqlens) = seqlens.try_extract_tensor::<i32>()?;
        let total = match seqlens {
            [t] if *t >= 0 => *t as usize + 1,
            other => {
                return Err(ort::Error::new(format!(
                    "{GQA}: seqlens_k = {other:?}, expected one length ≥ 0 (batch 1)"
                )));
            }
        };
        let past = total.checked_sub(tokens).ok_or_else(|| {
            ort::Error::new(format!("{GQA}: seqlens_k + 1 = {total} is shorter than the {tokens} new tokens"))
        })?;
        let (cdims, sdims) = (need(7, "cos_cache")?, need(8, "sin_cache")?);
        let rotary_rows = match cdims.as_slice() {
            &[rows, half] if half as usize * 2 == hd && rows >= 0 && sdims == cdims => rows as usize,
            _ => {
                return Err(ort::Error::new(format!(
                    "{GQA}: cos_cache {cdims:?} and sin_cache {sdims:?}, expected both [rows, {}]",
                    hd / 2
                )));
            }
        };
        let pos_dims = need(9, "position_ids")?;
        if pos_dims.iter().product::<i64>() != tokens as i64 {
            return Err(ort::Error::new(format!("{GQA}: position_ids {pos_dims:?} for {tokens} tokens")));
        }
        let shape = cpu::GqaShape { head_dim: hd, ..node };
        Ok(GqaCall { shape, tokens, width, packed, capacity, total, past, rotary_rows })
    }

    /// Columns of q, and of k (= v) for one token.
    fn widths(&self) -> (usize, usize) {
        (self.shape.heads * self.shape.head_dim, self.shape.kv_heads * self.shape.head_dim)
    }

    /// The present holds max(past buffer, total) positions, as ORT's GroupQueryAttention: the past's own
    /// buffer when it is large enough (one buffer with the past when bound so: appended in place), else a
    /// longer one the past is copied into.
    fn present_capacity(&self) -> usize {
        self.capacity.max(self.total)
    }

    fn present_dims(&self) -> Vec<i64> {
        let s = self.shape;
        vec![1, s.kv_heads as i64, self.present_capacity() as i64, s.head_dim as i64]
    }

    fn out_dims(&self) -> Vec<i64> {
        vec![1, self.tokens as i64, self.widths().0 as i64]
    }
}

impl Kernel for GqaKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let call = GqaCall::read(ctx, self.shape)?;
        let input =
            |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| ort::Error::new(format!("{GQA}: input {what} missing")));
        let (qw, kw) = call.widths();
        let qv = input(0, "query")?;
        let (_, q) = qv.try_extract_tensor::<f32>()?;
        let (kv, vv) = (ctx.input(1)?, ctx.input(2)?);
        let (k, v, stride) = match (&kv, &vv) {
            (Some(k), Some(v)) if !call.packed => {
                (k.try_extract_tensor::<f32>()?.1, v.try_extract_tensor::<f32>()?.1, kw)
            }
            _ => (&q[qw.min(q.len())..], &q[(qw + kw).min(q.len())..], call.width),
        };
        let cos = input(7, "cos_cache")?;
        let (_, cos) = cos.try_extract_tensor::<f32>()?;
        let sin = input(8, "sin_cache")?;
        let (_, sin) = sin.try_extract_tensor::<f32>()?;
        let pos = input(9, "position_ids")?;
        let (_, positions) = pos.try_extract_tensor::<i64>()?;
        let x = cpu::GqaTokens {
            tokens: call.tokens,
            q,
            q_stride: call.width,
            k,
            v,
            kv_stride: stride,
            cos,
            sin,
            positions,
        };

        let mut out =
            ctx.output(0, call.out_dims())?.ok_or_else(|| ort::Error::new(format!("{GQA}: output missing")))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        let (hd, kvh, capacity, past) = (call.shape.head_dim, call.shape.kv_heads, call.capacity, call.past);
        let present_cap = call.present_capacity();
        let present = |i: usize, o: usize, name: &str| -> ort::Result<_> {
            let past_v = input(i, name)?;
            let (_, data) = past_v.try_extract_tensor::<f32>()?;
            let (src, len) = (data.as_ptr(), data.len());
            let mut p = ctx
                .output(o, call.present_dims())?
                .ok_or_else(|| ort::Error::new(format!("{GQA}: present_{name} missing")))?;
            let (_, dst) = p.try_extract_tensor_mut::<f32>()?;
            if dst.as_ptr() != src && past > 0 {
                // Not one buffer: the present starts with the past's positions.
                // SAFETY: src points at the live past tensor of `len` floats, a different buffer than dst.
                let src = unsafe { std::slice::from_raw_parts(src, len) };
                for g in 0..kvh {
                    let (from, to) = (g * capacity * hd, g * present_cap * hd);
                    dst[to..to + past * hd].copy_from_slice(&src[from..from + past * hd]);
                }
            }
            Ok(p)
        };
        let (mut pk, mut pv) = (present(3, 1, "key")?, present(4, 2, "value")?);
        let (_, kc) = pk.try_extract_tensor_mut::<f32>()?;
        let (_, vc) = pv.try_extract_tensor_mut::<f32>()?;
        let mut cache = cpu::KvCache { k: kc, v: vc, capacity: present_cap, past };
        cpu::gqa(call.shape, &x, &mut cache, out, &OrtPool(ctx)).map_err(|e| kernel_err(GQA, e))
    }
}

/// The same two operators for ORT's CUDA provider: inputs stay on the device and the kernels of
/// `kernels/` (f32 activations: f32 GEMV for decode, bf16 tensor-core GEMM for prefill) run on the
/// provider's compute stream. Registered only for sessions on a CUDA device ([`domain_for`]).
pub mod cuda {
    use super::*;
    use ort::value::DynTensorValueType;
    use st_kernels::Dtype;
    use st_kernels::cuda::Cuda;
    use std::sync::OnceLock;

    const EP: &str = "CUDAExecutionProvider";

    /// The kernels for CUDA device `ordinal`, compiled (NVRTC, disk-cached under the st cache) once per
    /// process in the device's primary context, the context ORT's CUDA provider runs in.
    fn kernels(ordinal: usize) -> ort::Result<&'static Cuda> {
        type Loaded = std::collections::HashMap<usize, Result<&'static Cuda, String>>;
        static CUDA: OnceLock<std::sync::Mutex<Loaded>> = OnceLock::new();
        let mut loaded = CUDA
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| ort::Error::new("st CUDA kernels: a thread panicked while loading them"))?;
        let entry = loaded.entry(ordinal).or_insert_with(|| {
            let cache = crate::engine::cache::cache_dir().join("kernels");
            Cuda::new(ordinal, Some(&cache)).map(|c| &*Box::leak(Box::new(c))).map_err(|e| e.to_string())
        });
        entry.clone().map_err(|e| ort::Error::new(format!("st CUDA kernels: {e}")))
    }

    struct Device {
        stream: st_kernels::cuda::sys::CUstream,
    }

    fn device(ctx: &ComputeContext, op: &str) -> ort::Result<Device> {
        let stream = ctx.stream()?.ok_or_else(|| ort::Error::new(format!("{op}: no CUDA compute stream")))?;
        Ok(Device { stream: stream.as_ptr().cast() })
    }

    fn ptr(ctx: &ComputeContext, idx: usize, op: &str, what: &str) -> ort::Result<u64> {
        let v = ctx.input(idx)?.ok_or_else(|| ort::Error::new(format!("{op}: input {what} missing")))?;
        let t = v.downcast::<DynTensorValueType>()?;
        Ok(t.data_ptr() as u64)
    }

    /// Reads A's shape, allocates Y on the device, returns (m, A pointer, Y pointer).
    fn io(ctx: &ComputeContext, op: &str, k: usize, n: usize) -> ort::Result<(usize, u64, u64)> {
        let a = ctx.input(0)?.ok_or_else(|| ort::Error::new(format!("{op}: input A missing")))?;
        let dims: Vec<i64> = a
            .dtype()
            .tensor_shape()
            .ok_or_else(|| ort::Error::new(format!("{op}: A is not a tensor")))?
            .iter()
            .copied()
            .collect();
        if dims.last().copied() != Some(k as i64) {
            return Err(ort::Error::new(format!("{op}: A has shape {dims:?}, expected [..., {k}]")));
        }
        let m = dims[..dims.len() - 1].iter().product::<i64>().max(0) as usize;
        let a_ptr = a.downcast::<DynTensorValueType>()?.data_ptr() as u64;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = n as i64;
        }
        let y = ctx.output(0, out)?.ok_or_else(|| ort::Error::new(format!("{op}: output Y missing")))?;
        let y = y.downcast::<DynTensorValueType>()?;
        Ok((m, a_ptr, y.data_ptr() as u64))
    }

    /// `ai.st.MatMulInt4` on CUDA device `.0`.
    pub struct MatMulInt4(pub usize);
    impl Operator for MatMulInt4 {
        type Kernel<'attr> = CudaInt4;
        fn name(&self) -> &str {
            "MatMulInt4"
        }
        fn execution_provider_type(&self) -> Option<&str> {
            Some(EP)
        }
        fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
            super::MatMulInt4::F32.inputs()
        }
        fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
            super::MatMulInt4::F32.outputs()
        }
        fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<CudaInt4> {
            let kernel = super::MatMulInt4::F32.create_kernel(kctx)?;
            if kernel.tiled {
                return Err(ort::Error::new(
                    "MatMulInt4: column-tiled weights (attribute tile) run on the CPU only; export with --target cuda",
                ));
            }
            Ok(CudaInt4(kernel, self.0))
        }
    }
    pub struct CudaInt4(Int4Kernel, usize);
    impl Kernel for CudaInt4 {
        fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
            let op = "MatMulInt4";
            // accuracy_level does not apply: the GEMV runs in f32, the GEMM in bf16 (docs/KERNELS.md).
            let Int4Kernel { k, n, block, .. } = self.0;
            let dev = device(ctx, op)?;
            let (m, a, y) = io(ctx, op, k, n)?;
            if m == 0 {
                return Ok(());
            }
            if ctx.num_inputs()? > 4 && ctx.input(4)?.is_some() {
                return Err(ort::Error::new(format!(
                    "{op}: a bias input runs on the CPU only (export with --target cuda)"
                )));
            }
            let zp = if ctx.num_inputs()? > 3 && ctx.input(3)?.is_some() { ptr(ctx, 3, op, "zero_points")? } else { 0 };
            let layout = Int4Layout { n, k, block, zero_points: zp != 0 };
            let (b, s) = (ptr(ctx, 1, op, "B")?, ptr(ctx, 2, op, "scales")?);
            // SAFETY: ORT allocated every input on this device with the shapes the graph declares for
            // these attributes (A's checked above); the stream is the provider's.
            unsafe { kernels(self.1)?.int4_matmul_raw(dev.stream, Dtype::F32, layout, m, a, b, s, zp, y) }
                .map_err(|e| kernel_err(op, e))
        }
    }

    /// `ai.st.MatMulFp8` on CUDA device `.0`.
    pub struct MatMulFp8(pub usize);
    impl Operator for MatMulFp8 {
        type Kernel<'attr> = CudaFp8;
        fn name(&self) -> &str {
            "MatMulFp8"
        }
        fn execution_provider_type(&self) -> Option<&str> {
            Some(EP)
        }
        fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
            super::MatMulFp8.inputs()
        }
        fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
            super::MatMulFp8.outputs()
        }
        fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<CudaFp8> {
            Ok(CudaFp8(super::MatMulFp8.create_kernel(kctx)?, self.0))
        }
    }
    pub struct CudaFp8(Fp8Kernel, usize);
    impl Kernel for CudaFp8 {
        fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
            let op = "MatMulFp8";
            let Fp8Kernel { k, n, block } = self.0;
            let dev = device(ctx, op)?;
            let (m, a, y) = io(ctx, op, k, n)?;
            if m == 0 {
                return Ok(());
            }
            let scales = if block == 0 { Fp8Scales::PerChannel } else { Fp8Scales::PerBlock(block) };
            let layout = Fp8Layout { n, k, scales };
            let (w, s) = (ptr(ctx, 1, op, "W")?, ptr(ctx, 2, op, "scales")?);
            // SAFETY: as for MatMulInt4.
            unsafe { kernels(self.1)?.fp8_matmul_raw(dev.stream, Dtype::F32, layout, m, a, w, s, y) }
                .map_err(|e| kernel_err(op, e))
        }
    }

    /// `ai.st.GroupQueryAttention` on CUDA device `.0`: `kernels/attention.cu` (f32; ORT's own CUDA
    /// GroupQueryAttention takes fp16/bf16 only). The lengths come in host memory; everything else stays
    /// on the device, and a present bound to the past's buffer is appended in place.
    pub struct GroupQueryAttention(pub usize);
    impl Operator for GroupQueryAttention {
        type Kernel<'attr> = CudaGqa;
        const INPLACES: &[(u32, u32)] = &[(3, 1), (4, 2)];
        fn name(&self) -> &str {
            "GroupQueryAttention"
        }
        fn execution_provider_type(&self) -> Option<&str> {
            Some(EP)
        }
        fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
            gqa_inputs(MemoryType::CPUInput)
        }
        fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
            super::GroupQueryAttention.outputs()
        }
        fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<CudaGqa> {
            Ok(CudaGqa(super::GroupQueryAttention.create_kernel(kctx)?, self.0))
        }
    }
    pub struct CudaGqa(GqaKernel, usize);

    impl Kernel for CudaGqa {
        fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
            let call = GqaCall::read(ctx, self.0.shape)?;
            let (qw, kw) = call.widths();
            let q = ptr(ctx, 0, GQA, "query")?;
            let (k, v, kv_stride) = if call.packed {
                (q + 4 * qw as u64, q + 4 * (qw + kw) as u64, call.width)
            } else {
                (ptr(ctx, 1, GQA, "key")?, ptr(ctx, 2, GQA, "value")?, kw)
            };
            let out =
                ctx.output(0, call.out_dims())?.ok_or_else(|| ort::Error::new(format!("{GQA}: output missing")))?;
            let out = out.downcast::<DynTensorValueType>()?.data_ptr() as u64;
            // As the CPU kernel: the past's own buffer when bound so, else a longer one.
            let present = |o: usize, name: &str| -> ort::Result<u64> {
                let p = ctx
                    .output(o, call.present_dims())?
                    .ok_or_else(|| ort::Error::new(format!("{GQA}: present_{name} missing")))?;
                Ok(p.downcast::<DynTensorValueType>()?.data_ptr() as u64)
            };
            let (k_cache, v_cache) = (present(1, "key")?, present(2, "value")?);
            let ptrs = st_kernels::gqa::GqaPointers {
                q,
                k,
                v,
                cos: ptr(ctx, 7, GQA, "cos_cache")?,
                sin: ptr(ctx, 8, GQA, "sin_cache")?,
                positions: ptr(ctx, 9, GQA, "position_ids")?,
                past_k: ptr(ctx, 3, GQA, "past_key")?,
                past_v: ptr(ctx, 4, GQA, "past_value")?,
                k_cache,
                v_cache,
                out,
            };
            let dims = st_kernels::gqa::GqaDims {
                tokens: call.tokens,
                q_stride: call.width,
                kv_stride,
                rows: call.rotary_rows,
                past: call.past,
                capacity: call.present_capacity(),
                past_capacity: call.capacity,
            };
            let dev = device(ctx, GQA)?;
            // SAFETY: ORT allocated every input and output on this device with the shapes checked above
            // (the lengths, read from host memory, decided the present's size); the stream is the provider's.
            unsafe { kernels(self.1)?.gqa_raw(dev.stream, call.shape, &dims, &ptrs) }.map_err(|e| kernel_err(GQA, e))
        }
    }
}

/// The domain for a session on `device`: the CPU operators always (ORT places nodes its CUDA
/// provider does not take on the CPU), the CUDA ones for CUDA and TensorRT sessions.
pub fn domain_for(device: &crate::engine::Device) -> ort::Result<OperatorDomain> {
    let d = domain()?;
    match device {
        crate::engine::Device::Cpu => Ok(d),
        crate::engine::Device::Cuda { device_id } | crate::engine::Device::TensorRt { device_id, .. } => {
            let id = usize::try_from(*device_id).unwrap_or(0);
            d.add(cuda::MatMulInt4(id))?.add(cuda::MatMulFp8(id))?.add(cuda::GroupQueryAttention(id))
        }
    }
}

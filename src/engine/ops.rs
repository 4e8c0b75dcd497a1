//! st's ONNX Runtime custom operators (domain [`DOMAIN`]), the fused weight-only matmuls that
//! `st export --target cuda` writes for the quantized linears:
//!
//! - `ai.st.MatMulInt4(A, B, scales[, zero_points])`, attributes `K`, `N`, `block_size`: MatMulNBits'
//!   inputs and layout exactly (bits = 4), so the same initializers serve both ops.
//! - `ai.st.MatMulFp8(A, W, scales)`, attributes `K`, `N`, `block_size` (0 = per-channel scales):
//!   `W` is `[N, K]` E4M3FN bytes (stored as uint8), scales `[N]` or `[N, ceil(K / block_size)]`.
//!
//! `Y[..., N] = A[..., K] · Wᵀ`. This file registers the CPU implementation for f32 activations
//! ([`st_kernels::cpu`]: dequantization inside the matmul loop, AVX-512 where the CPU has it, ORT's
//! thread pool). The CUDA kernels (`kernels/`, launched through [`st_kernels::cuda`]) take fp16/bf16
//! activations; running them inside ORT's CUDA provider needs a graph with fp16 activations, which the
//! exporter does not write yet (see docs/KERNELS.md).

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;
use st_kernels::{Fp8Layout, Fp8Scales, Fp8Weights, Int4Layout, Int4Weights, cpu};

/// The custom-op domain.
pub const DOMAIN: &str = "ai.st";

/// The domain with both operators, for `SessionBuilder::with_operators`.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(MatMulInt4)?.add(MatMulFp8)
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

/// Reads A, allocates Y = A's shape with the last axis K replaced by N, returns (m, Y).
fn run_matmul(
    ctx: &ComputeContext,
    op: &str,
    k: usize,
    n: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<(), st_kernels::Error>,
) -> ort::Result<()> {
    let a = ctx.input(0)?.ok_or_else(|| ort::Error::new(format!("{op}: input A missing")))?;
    let (shape, a) = a.try_extract_tensor::<f32>()?;
    let dims: Vec<i64> = shape.iter().copied().collect();
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
    f(a, m, y).map_err(|e| kernel_err(op, e))
}

fn u8_input<'a>(ctx: &'a ComputeContext, idx: usize, op: &str, what: &str) -> ort::Result<ort::value::ValueRef<'a>> {
    ctx.input(idx)?.ok_or_else(|| ort::Error::new(format!("{op}: input {what} missing")))
}

pub struct MatMulInt4;
pub struct Int4Kernel {
    k: usize,
    n: usize,
    block: usize,
}

impl Operator for MatMulInt4 {
    type Kernel<'attr> = Int4Kernel;
    fn name(&self) -> &str {
        "MatMulInt4"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Uint8),
        ]
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<Int4Kernel> {
        let op = "MatMulInt4";
        Ok(Int4Kernel { k: attr(kctx, op, "K")?, n: attr(kctx, op, "N")?, block: attr(kctx, op, "block_size")? })
    }
}

impl Kernel for Int4Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = "MatMulInt4";
        let b = u8_input(ctx, 1, op, "B")?;
        let (_, b) = b.try_extract_tensor::<u8>()?;
        let s = u8_input(ctx, 2, op, "scales")?;
        let (_, s) = s.try_extract_tensor::<f32>()?;
        let zp_value = if ctx.num_inputs()? > 3 { ctx.input(3)? } else { None };
        let zp = match &zp_value {
            Some(v) => Some(v.try_extract_tensor::<u8>()?.1),
            None => None,
        };
        let layout = Int4Layout { n: self.n, k: self.k, block: self.block, zero_points: zp.is_some() };
        let w = Int4Weights { layout, b, scales: s, zero_points: zp };
        let pool = OrtPool(ctx);
        run_matmul(ctx, op, self.k, self.n, |a, m, y| cpu::int4_matmul(a, m, &w, y, &pool))
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
        run_matmul(ctx, op, self.k, self.n, |a, m, y| cpu::fp8_matmul(a, m, &w, y, &pool))
    }
}

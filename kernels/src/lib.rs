//! Weight-only dequant-matmul kernels for the quantized linears of SpatialThinker-7B:
//! `y[m, n] = a[m, k] · Wᵀ` with W in int4 (ORT's MatMulNBits layout) or fp8 E4M3FN.
//!
//! - `common.cuh`, `int4_matmul.cu`, `fp8_matmul.cu` (this crate's root): the CUDA sources, one op per file,
//!   a GEMV path for M ≤ 8 and an mma.sync GEMM for prefill; [`launch::plan`] picks the kernel and grid.
//! - `attention.cu`: grouped-query attention for f32 activations on the GPU; [`gqa`] checks and plans it.
//! - [`cuda`]: cudarc with dynamic loading; NVRTC at first use, PTX cached by source hash + arch.
//! - [`host`]: the same sources compiled for the CPU over an emulation shim (tests).
//! - [`cpu`]: the ops for f32 activations on the CPU, dequantizing inside the matmul loop (AVX-512).
//! - [`reference`]: the float64 oracle.
//!
//! ```
//! use st_kernels::{Int4Layout, Int4Weights, cpu};
//! let layout = Int4Layout { n: 2, k: 32, block: 32, zero_points: false };
//! let b = vec![0x99u8; layout.b_len()]; // every weight q = 9, i.e. (9 - 8) * scale
//! let scales = vec![0.5f32; layout.scales_len()];
//! let w = Int4Weights { layout, b: &b, scales: &scales, zero_points: None };
//! let mut y = vec![0.0f32; 2];
//! cpu::int4_matmul(&[1.0f32; 32], 1, &w, &mut y, &cpu::Serial)?;
//! assert_eq!(y, [16.0, 16.0]);
//! # Ok::<(), st_kernels::Error>(())
//! ```

pub mod cpu;
pub mod cuda;
mod error;
pub mod gqa;
pub mod host;
pub mod launch;
mod layout;
pub mod reference;
pub mod source;

pub use error::{Error, Result};
pub use layout::{Activation, Dtype, Fp8Layout, Fp8Scales, Fp8Weights, Int4Layout, Int4Weights, check_io, fp8_to_f32};

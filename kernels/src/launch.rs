//! Which kernel runs a given shape, and its grid: the one place that decides, for the GPU and for the host
//! emulation alike.

use crate::layout::Dtype;

/// Threads per block of every kernel (`ST_THREADS` in common.cuh).
pub const THREADS: u32 = 128;
/// Warps per block (`ST_WARPS`).
pub const WARPS: usize = 4;

/// Weight rows each GEMV warp owns for an activation tile of `tile` rows (`ST_GEMV_ROWS` in common.cuh).
pub fn gemv_rows_per_warp(tile: usize) -> usize {
    if tile <= 2 { 4 } else { 2 }
}

/// Weight rows per GEMV block.
pub fn gemv_rows_per_block(tile: usize) -> usize {
    WARPS * gemv_rows_per_warp(tile)
}
/// GEMM output tile (`ST_BM` x `ST_BN`).
pub const GEMM_TILE: (usize, usize) = (64, 64);
/// Up to this many activation rows take the GEMV path.
pub const GEMV_MAX_M: usize = 8;

/// SpatialThinker-7B's (Qwen2.5-VL-7B's) decoder linears as (name, n outputs, k inputs), for benchmarks:
/// q/o, k/v, gate/up, down, lm_head.
pub const SPATIALTHINKER_7B_LINEARS: [(&str, usize, usize); 5] = [
    ("q_proj/o_proj", 3584, 3584),
    ("k_proj/v_proj", 512, 3584),
    ("gate_proj/up_proj", 18944, 3584),
    ("down_proj", 3584, 18944),
    ("lm_head", 152064, 3584),
];

/// The CUDA programs, one `.cu` file each: the two weight formats' matmuls and the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Int4,
    Fp8,
    Attention,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Int4, Op::Fp8, Op::Attention];

    pub fn name(self) -> &'static str {
        match self {
            Op::Int4 => "int4",
            Op::Fp8 => "fp8",
            Op::Attention => "attention",
        }
    }
}

/// A kernel launch: entry point name and grid (blocks of [`THREADS`] threads, no dynamic shared memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kernel: String,
    pub grid: (u32, u32),
    pub threads: u32,
    /// The most activation rows the kernel serves (its GEMV tile; unbounded for the GEMM).
    pub max_m: usize,
}

/// The GEMV row-tile (1, 2, 4 or 8) that serves `m` rows.
pub fn gemv_tile(m: usize) -> usize {
    match m {
        0 | 1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

/// The launch for `y[m, n] = a[m, k] · w[n, k]ᵀ`: GEMV for m ≤ 8 (decode, speculation, forced tokens),
/// the tensor-core GEMM above (prefill).
pub fn plan(op: Op, dtype: Dtype, m: usize, n: usize) -> Launch {
    if m <= GEMV_MAX_M {
        Launch {
            kernel: format!("st_{}_gemv_{}_m{}", op.name(), dtype.name(), gemv_tile(m)),
            grid: (n.div_ceil(gemv_rows_per_block(gemv_tile(m))) as u32, 1),
            threads: THREADS,
            max_m: gemv_tile(m),
        }
    } else {
        Launch {
            kernel: format!("st_{}_gemm_{}", op.name(), dtype.name()),
            grid: (n.div_ceil(GEMM_TILE.1) as u32, m.div_ceil(GEMM_TILE.0) as u32),
            threads: THREADS,
            max_m: usize::MAX,
        }
    }
}

/// The GEMM launch whatever `m` is (tests use it to run the tensor-core path on small shapes).
pub fn plan_gemm(op: Op, dtype: Dtype, m: usize, n: usize) -> Launch {
    plan(op, dtype, m.max(GEMV_MAX_M + 1), n).with_grid_for(m, n)
}

impl Launch {
    fn with_grid_for(mut self, m: usize, n: usize) -> Self {
        self.grid = (n.div_ceil(GEMM_TILE.1) as u32, m.div_ceil(GEMM_TILE.0) as u32);
        self
    }

    /// Checks that this launch covers `m` rows and `n` columns.
    pub fn covers(&self, m: usize, n: usize) -> bool {
        let cols = if self.max_m == usize::MAX { GEMM_TILE.1 } else { gemv_rows_per_block(self.max_m) };
        let rows = if self.max_m == usize::MAX { self.grid.1 as usize * GEMM_TILE.0 } else { self.max_m };
        m <= rows && m <= self.max_m && n <= self.grid.0 as usize * cols
    }
}

/// Every entry point of `op`, for compile checks.
pub fn kernel_names(op: Op) -> Vec<String> {
    if op == Op::Attention {
        return crate::gqa::KERNELS.iter().map(|k| k.to_string()).collect();
    }
    let mut names = Vec::new();
    for dtype in [Dtype::F16, Dtype::Bf16, Dtype::F32] {
        for tile in [1, 2, 4, 8] {
            names.push(format!("st_{}_gemv_{}_m{tile}", op.name(), dtype.name()));
        }
        names.push(format!("st_{}_gemm_{}", op.name(), dtype.name()));
    }
    names
}

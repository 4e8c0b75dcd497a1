//! The GPU's grouped-query attention (`attention.cu`): its argument block, the checks every call gets
//! before launching (device pointers carry no lengths) and the three launches, shared by the GPU
//! ([`crate::cuda::Cuda::gqa_raw`]) and the host emulation ([`crate::host::gqa`]).

use crate::cpu::GqaShape;
use crate::error::{Error, Result};
use crate::launch::{Launch, THREADS};

/// The most `head_dim` the kernel holds in registers (`ST_GQA_MAX_HD`).
pub const MAX_HEAD_DIM: usize = 256;

/// The entry points, in launch order.
pub const KERNELS: [&str; 3] = ["st_gqa_copy_f32", "st_gqa_append_f32", "st_gqa_attend_f32"];

/// A call's sizes, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GqaDims {
    /// New tokens of the call.
    pub tokens: usize,
    /// Floats between two tokens' query rows, and between their key (value) rows.
    pub q_stride: usize,
    pub kv_stride: usize,
    /// Rows of the cos / sin tables (`head_dim / 2` floats each).
    pub rows: usize,
    /// Positions already cached, and the cache's positions per KV head.
    pub past: usize,
    pub capacity: usize,
    /// Positions per KV head of the past buffer when it is not the cache (the present) itself.
    pub past_capacity: usize,
}

/// Addresses (device pointers on the GPU, host pointers in the emulation) of a call's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GqaPointers {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub cos: u64,
    pub sin: u64,
    /// i64 `[tokens]`.
    pub positions: u64,
    pub past_k: u64,
    pub past_v: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub out: u64,
}

/// `StGqaArgs` of attention.cu, passed by value to each kernel.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GqaArgs {
    pub p: [u64; 11],
    pub ints: [i32; 10],
    pub scale: f32,
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Attention(format!("{what} = {v} exceeds the GPU kernel's 32-bit sizes")))
}

impl GqaDims {
    /// Checks the sizes against `shape` and builds the argument block.
    pub fn args(&self, shape: GqaShape, p: &GqaPointers) -> Result<GqaArgs> {
        shape.validate()?;
        let (h, kvh, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
        if hd > MAX_HEAD_DIM {
            return Err(Error::Attention(format!("head_dim {hd} (the GPU kernel takes at most {MAX_HEAD_DIM})")));
        }
        if self.q_stride < h * hd || self.kv_stride < kvh * hd {
            return Err(Error::Attention(format!(
                "strides q {} and kv {} are shorter than the rows ({} and {})",
                self.q_stride,
                self.kv_stride,
                h * hd,
                kvh * hd
            )));
        }
        if self.past + self.tokens > self.capacity {
            return Err(Error::Attention(format!(
                "{} cached + {} new positions exceed the cache's capacity {}",
                self.past, self.tokens, self.capacity
            )));
        }
        let separate = p.past_k != p.k_cache;
        if separate != (p.past_v != p.v_cache) {
            return Err(Error::Attention(
                "past key and value must both be the cache's buffers or both be other buffers".into(),
            ));
        }
        if separate && self.past > self.past_capacity {
            return Err(Error::Attention(format!(
                "{} cached positions in a past buffer of {}",
                self.past, self.past_capacity
            )));
        }
        let ints = [
            int("q_stride", self.q_stride)?,
            int("kv_stride", self.kv_stride)?,
            int("rows", self.rows)?,
            int("tokens", self.tokens)?,
            int("past", self.past)?,
            int("capacity", self.capacity)?,
            int("past_capacity", if separate { self.past_capacity } else { self.capacity })?,
            int("heads", h)?,
            int("kv_heads", kvh)?,
            int("head_dim", hd)?,
        ];
        int("cache elements", kvh * self.capacity * hd)?;
        let scale = if shape.scale == 0.0 { 1.0 / (hd as f32).sqrt() } else { shape.scale };
        let ptrs = [p.q, p.k, p.v, p.cos, p.sin, p.positions, p.past_k, p.past_v, p.k_cache, p.v_cache, p.out];
        Ok(GqaArgs { p: ptrs, ints, scale })
    }
}

/// The launches of a call, in order: the past copied into the cache when they are different buffers
/// (and the past holds positions), the new keys and values appended, the attention. None when there are
/// no new tokens.
pub fn plan(shape: GqaShape, dims: &GqaDims, p: &GqaPointers) -> Vec<Launch> {
    let launch = |kernel: &str, grid: (usize, usize)| Launch {
        kernel: kernel.into(),
        grid: (grid.0 as u32, grid.1 as u32),
        threads: THREADS,
        max_m: 0,
    };
    if dims.tokens == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(3);
    if p.past_k != p.k_cache && dims.past > 0 {
        out.push(launch(KERNELS[0], (shape.kv_heads, 2)));
    }
    out.push(launch(KERNELS[1], (dims.tokens, 1)));
    out.push(launch(KERNELS[2], (shape.heads, dims.tokens)));
    out
}

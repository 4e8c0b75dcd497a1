//! Weight layouts the kernels read, with the length checks every entry point runs before touching memory.

use crate::error::{Error, Result};

/// The activation (and scale, and output) element type of the GPU kernels. With f32 activations the
/// GEMV computes in f32 throughout and the GEMM feeds the tensor cores bf16 (f32's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F16,
    Bf16,
    F32,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
        }
    }
}

/// An activation type: `half::f16`, `half::bf16` or `f32`.
pub trait Activation: Copy + Send + Sync + bytemuck::Pod + 'static {
    const DTYPE: Dtype;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// A NaN pattern used to poison outputs in tests.
    fn nan() -> Self;
}

impl Activation for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn nan() -> Self {
        half::f16::NAN
    }
}

impl Activation for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn nan() -> Self {
        f32::NAN
    }
}

impl Activation for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn nan() -> Self {
        half::bf16::NAN
    }
}

/// int4 weights in ORT's MatMulNBits layout (bits = 4) for an `[n, k]` linear (y = x Wᵀ):
/// `b` is `[n][k_blocks][block / 2]` (element 2i in the low nibble of byte i), `scales` `[n][k_blocks]`,
/// `zero_points` (optional) `[n][ceil(k_blocks / 2)]` (block 2j in the low nibble); absent means 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int4Layout {
    pub n: usize,
    pub k: usize,
    pub block: usize,
    pub zero_points: bool,
}

impl Int4Layout {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }
    pub fn b_len(&self) -> usize {
        self.n * self.k_blocks() * self.block / 2
    }
    pub fn scales_len(&self) -> usize {
        self.n * self.k_blocks()
    }
    pub fn zero_points_len(&self) -> usize {
        if self.zero_points { self.n * self.k_blocks().div_ceil(2) } else { 0 }
    }
    /// Bytes the weights occupy (what a decode step streams), with scales of `scale_bytes` each.
    pub fn bytes(&self, scale_bytes: usize) -> usize {
        self.b_len() + self.scales_len() * scale_bytes + self.zero_points_len()
    }
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 || self.k == 0 {
            return Err(Error::Shape(format!("int4 weight [{}, {}] is empty", self.n, self.k)));
        }
        if self.block < 32 || !self.block.is_multiple_of(32) {
            return Err(Error::Shape(format!("int4 block size {} (expected 32, 64 or 128)", self.block)));
        }
        check_i32("int4 n", self.n)?;
        check_i32("int4 k", self.k)?;
        Ok(())
    }
}

/// How fp8 weights are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Scales {
    /// One scale per output channel: `scales` is `[n]`.
    PerChannel,
    /// One scale per `block` consecutive inputs of a channel: `scales` is `[n][ceil(k / block)]`.
    PerBlock(usize),
}

/// fp8 E4M3FN weights `[n][k]`, one byte per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Layout {
    pub n: usize,
    pub k: usize,
    pub scales: Fp8Scales,
}

impl Fp8Layout {
    pub fn w_len(&self) -> usize {
        self.n * self.k
    }
    pub fn scales_len(&self) -> usize {
        match self.scales {
            Fp8Scales::PerChannel => self.n,
            Fp8Scales::PerBlock(b) => self.n * self.k.div_ceil(b),
        }
    }
    /// The kernels' `block` argument: 0 for per-channel scales.
    pub fn block_arg(&self) -> usize {
        match self.scales {
            Fp8Scales::PerChannel => 0,
            Fp8Scales::PerBlock(b) => b,
        }
    }
    pub fn bytes(&self, scale_bytes: usize) -> usize {
        self.w_len() + self.scales_len() * scale_bytes
    }
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 || self.k == 0 {
            return Err(Error::Shape(format!("fp8 weight [{}, {}] is empty", self.n, self.k)));
        }
        if let Fp8Scales::PerBlock(b) = self.scales
            && (b == 0 || b % 16 != 0)
        {
            return Err(Error::Shape(format!("fp8 scale block {b} (expected a multiple of 16)")));
        }
        check_i32("fp8 n", self.n)?;
        check_i32("fp8 k", self.k)?;
        Ok(())
    }
}

/// Borrowed int4 weights with scales of type `S`.
#[derive(Debug, Clone, Copy)]
pub struct Int4Weights<'a, S> {
    pub layout: Int4Layout,
    pub b: &'a [u8],
    pub scales: &'a [S],
    pub zero_points: Option<&'a [u8]>,
}

impl<S> Int4Weights<'_, S> {
    pub fn validate(&self) -> Result<()> {
        self.layout.validate()?;
        let l = &self.layout;
        check_parts(
            ["int4 B", "int4 scales", "int4 zero_points"],
            [(l.b_len(), self.b.len()), (l.scales_len(), self.scales.len())],
            l.zero_points.then(|| l.zero_points_len()),
            self.zero_points.map(<[u8]>::len),
        )
    }
}

/// A borrowed weight's parts against its layout: bytes and scales (`[(expected, found); 2]`), and the
/// zero points' length when the layout has them against the given ones'. `names` (B, scales, zero
/// points) open the errors, the first word of the zero points' name the zero-point mismatch.
pub(crate) fn check_parts(
    names: [&'static str; 3],
    lens: [(usize, usize); 2],
    zero_points: Option<usize>,
    given: Option<usize>,
) -> Result<()> {
    let [b, scales, zp] = names;
    expect_len(b, lens[0].0, lens[0].1)?;
    expect_len(scales, lens[1].0, lens[1].1)?;
    let kind = zp.strip_suffix(" zero_points").unwrap_or(zp);
    match (zero_points, given) {
        (Some(expected), Some(found)) => expect_len(zp, expected, found),
        (None, None) => Ok(()),
        (Some(_), None) => Err(Error::Shape(format!("{kind} layout has zero points but none were given"))),
        (None, Some(_)) => Err(Error::Shape(format!("{kind} zero points given for a symmetric layout"))),
    }
}

/// Borrowed fp8 weights with scales of type `S`.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Weights<'a, S> {
    pub layout: Fp8Layout,
    pub w: &'a [u8],
    pub scales: &'a [S],
}

impl<S> Fp8Weights<'_, S> {
    pub fn validate(&self) -> Result<()> {
        self.layout.validate()?;
        expect_len("fp8 W", self.layout.w_len(), self.w.len())?;
        expect_len("fp8 scales", self.layout.scales_len(), self.scales.len())
    }
}

/// Checks activations `[m, k]` and output `[m, n]` lengths.
pub fn check_io(m: usize, n: usize, k: usize, a_len: usize, y_len: usize) -> Result<()> {
    if m == 0 {
        return Err(Error::Shape("matmul with m = 0 rows".into()));
    }
    check_i32("m", m)?;
    expect_len("activations A [m, k]", m * k, a_len)?;
    expect_len("output Y [m, n]", m * n, y_len)
}

pub(crate) fn expect_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found { Ok(()) } else { Err(Error::Length { what, expected, found }) }
}

fn check_i32(what: &str, v: usize) -> Result<()> {
    if v > i32::MAX as usize / 2 {
        return Err(Error::Shape(format!("{what} = {v} is too large for the kernels' 32-bit indices")));
    }
    Ok(())
}

/// E4M3FN byte → f32 (exact; NaN codes give NaN).
pub fn fp8_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((byte >> 3) & 0xF) as i32;
    let man = (byte & 0x7) as f32;
    if exp == 0xF && byte & 0x7 == 0x7 {
        return f32::NAN;
    }
    if exp == 0 { sign * man / 8.0 * 2f32.powi(-6) } else { sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7) }
}

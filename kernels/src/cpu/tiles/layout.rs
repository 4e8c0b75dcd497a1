//! The column-tiled layout itself: its shape ([`TileLayout`]), borrowed and owned tiled weights, and the
//! rearrangements `st export` writes — MatMulNBits' 4- and 8-bit rows into tiles ([`tile`], [`tile_int8`]) and an
//! MLP's gate and up into alternating tiles ([`swiglu_pairs`]). The loops that read them are in the parent module.

use super::TILE;
use crate::error::{Error, Result};
use crate::layout::Int4Layout;

/// Shape of tiled weights: the `[n, k]` linear's [`Int4Layout`] (block a power of two ≥ 32) and the
/// weights' bits. `b` is `[tiles][k_blocks · block / 8][64 · bits / 4]` bytes, `scales`
/// `[tiles][k_blocks][16]`, `zero_points` (optional) `[tiles][k_blocks][16]` one byte each (absent
/// means 8 for 4 bits, 128 for 8). Columns past n are padding (scale 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileLayout(pub Int4Layout, pub WeightBits);

/// The width of tiled weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightBits {
    /// Two weights a byte (the decoder's linears).
    Four,
    /// A weight a byte (lm_head at `int8`).
    Eight,
}

impl TileLayout {
    /// 4-bit weights.
    pub fn int4(layout: Int4Layout) -> Self {
        TileLayout(layout, WeightBits::Four)
    }
    /// 8-bit weights.
    pub fn int8(layout: Int4Layout) -> Self {
        TileLayout(layout, WeightBits::Eight)
    }
    pub fn bits(&self) -> usize {
        match self.1 {
            WeightBits::Four => 4,
            WeightBits::Eight => 8,
        }
    }
    pub fn tiles(&self) -> usize {
        self.0.n.div_ceil(TILE)
    }
    /// Bytes of one tile's weights.
    pub fn tile_bytes(&self) -> usize {
        self.0.k_blocks() * self.0.block * TILE * self.bits() / 8
    }
    pub fn b_len(&self) -> usize {
        self.tiles() * self.tile_bytes()
    }
    pub fn scales_len(&self) -> usize {
        self.tiles() * self.0.k_blocks() * TILE
    }
    pub fn zero_points_len(&self) -> usize {
        if self.0.zero_points { self.scales_len() } else { 0 }
    }
    /// Bytes a call streams, with scales of `scale_bytes` each.
    pub fn bytes(&self, scale_bytes: usize) -> usize {
        self.b_len() + self.scales_len() * scale_bytes + self.zero_points_len()
    }
    pub fn validate(&self) -> Result<()> {
        self.0.validate()?;
        if !self.0.block.is_power_of_two() {
            return Err(Error::Shape(format!("tiled int4 block size {} (expected a power of two ≥ 32)", self.0.block)));
        }
        Ok(())
    }
}

/// Borrowed tiled int4 weights with scales of type `S`.
#[derive(Debug, Clone, Copy)]
pub struct Int4Tiles<'a, S> {
    pub layout: TileLayout,
    pub b: &'a [u8],
    pub scales: &'a [S],
    pub zero_points: Option<&'a [u8]>,
}

impl<S> Int4Tiles<'_, S> {
    pub fn validate(&self) -> Result<()> {
        self.layout.validate()?;
        let l = &self.layout;
        let names = match l.1 {
            WeightBits::Four => ["tiled int4 B", "tiled int4 scales", "tiled int4 zero_points"],
            WeightBits::Eight => ["tiled int8 B", "tiled int8 scales", "tiled int8 zero_points"],
        };
        crate::layout::check_parts(
            names,
            [(l.b_len(), self.b.len()), (l.scales_len(), self.scales.len())],
            l.0.zero_points.then(|| l.zero_points_len()),
            self.zero_points.map(<[u8]>::len),
        )
    }
}

/// Owned tiled weights, as [`tile`] makes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiled<S> {
    pub layout: TileLayout,
    pub b: Vec<u8>,
    pub scales: Vec<S>,
    pub zero_points: Option<Vec<u8>>,
}

impl<S> Tiled<S> {
    pub fn view(&self) -> Int4Tiles<'_, S> {
        Int4Tiles { layout: self.layout, b: &self.b, scales: &self.scales, zero_points: self.zero_points.as_deref() }
    }
}

/// An MLP's gate and up projections, tiled alike (n a multiple of 16), as one linear of 2n columns
/// whose tiles alternate gate and up ([`super::int4_tiles_swiglu_int8`]'s layout): tile 2j is the gate's tile j,
/// tile 2j + 1 the up projection's. Bytes, scales and zero points are moved, not changed.
pub fn swiglu_pairs<S: Copy>(gate: &Tiled<S>, up: &Tiled<S>) -> Result<Tiled<S>> {
    gate.view().validate()?;
    up.view().validate()?;
    let l = gate.layout;
    if up.layout != l || !l.0.n.is_multiple_of(TILE) {
        return Err(Error::Shape(format!(
            "SwiGLU pairs: gate {:?} and up {:?} (expected the same tiled layout, n a multiple of {TILE})",
            gate.layout, up.layout
        )));
    }
    let zip = |g: &[u8], u: &[u8], each: usize| -> Vec<u8> {
        g.chunks_exact(each).zip(u.chunks_exact(each)).flat_map(|(g, u)| g.iter().chain(u).copied()).collect()
    };
    let per = l.0.k_blocks() * TILE;
    let scales = gate
        .scales
        .chunks_exact(per)
        .zip(up.scales.chunks_exact(per))
        .flat_map(|(g, u)| g.iter().chain(u).copied())
        .collect();
    let zero_points = match (&gate.zero_points, &up.zero_points) {
        (Some(g), Some(u)) => Some(zip(g, u, per)),
        _ => None,
    };
    let layout = TileLayout(Int4Layout { n: 2 * l.0.n, ..l.0 }, l.1);
    Ok(Tiled { layout, b: zip(&gate.b, &up.b, l.tile_bytes()), scales, zero_points })
}

/// Rearranges 4-bit weights in MatMulNBits' layout ([`crate::Int4Weights`]) into tiles; the values,
/// scales and zero points are unchanged.
pub fn tile<S: Copy + Default>(w: &crate::Int4Weights<'_, S>) -> Result<Tiled<S>> {
    w.validate()?;
    let layout = TileLayout::int4(w.layout);
    layout.validate()?;
    let l = w.layout;
    let (kb, block) = (l.k_blocks(), l.block);
    let row_bytes = kb * block / 2;
    let steps = kb * block / 8;
    let nib = |row: usize, k: usize| -> u8 {
        let byte = w.b[row * row_bytes + k / 2];
        if k.is_multiple_of(2) { byte & 0xF } else { byte >> 4 }
    };
    let zero = |row: usize, blk: usize| -> u8 {
        match w.zero_points {
            Some(zp) => {
                let byte = zp[row * kb.div_ceil(2) + blk / 2];
                if blk.is_multiple_of(2) { byte & 0xF } else { byte >> 4 }
            }
            None => 8,
        }
    };
    let mut b = vec![0x88u8; layout.b_len()];
    let mut scales = vec![S::default(); layout.scales_len()];
    let mut zps = l.zero_points.then(|| vec![8u8; layout.zero_points_len()]);
    for t in 0..layout.tiles() {
        let tile = &mut b[t * layout.tile_bytes()..(t + 1) * layout.tile_bytes()];
        for c in 0..TILE.min(l.n - t * TILE) {
            let row = t * TILE + c;
            for s in 0..steps {
                for j in 0..4 {
                    tile[64 * s + 4 * c + j] = nib(row, 8 * s + j) | nib(row, 8 * s + 4 + j) << 4;
                }
            }
            for blk in 0..kb {
                scales[(t * kb + blk) * TILE + c] = w.scales[row * kb + blk];
                if let Some(z) = zps.as_mut() {
                    z[(t * kb + blk) * TILE + c] = zero(row, blk);
                }
            }
        }
    }
    Ok(Tiled { layout, b, scales, zero_points: zps })
}

/// Rearranges 8-bit weights in MatMulNBits' layout (`bits` = 8: `b` `[n][k_blocks][block]` bytes,
/// `scales` `[n][k_blocks]`, `zero_points` `[n][k_blocks]` bytes) into tiles; the values, scales and zero
/// points are unchanged.
pub fn tile_int8<S: Copy + Default>(
    layout: Int4Layout,
    b: &[u8],
    scales: &[S],
    zero_points: Option<&[u8]>,
) -> Result<Tiled<S>> {
    use crate::layout::expect_len;
    let tl = TileLayout::int8(layout);
    tl.validate()?;
    let (n, kb, block) = (layout.n, layout.k_blocks(), layout.block);
    expect_len("int8 B", n * kb * block, b.len())?;
    expect_len("int8 scales", n * kb, scales.len())?;
    match (layout.zero_points, zero_points) {
        (true, Some(z)) => expect_len("int8 zero_points", n * kb, z.len())?,
        (false, None) => {}
        _ => return Err(Error::Shape("int8 zero points do not match the layout".into())),
    }
    let row_bytes = kb * block;
    let steps = row_bytes / 8;
    let mut out = vec![0x80u8; tl.b_len()];
    let mut s = vec![S::default(); tl.scales_len()];
    let mut zps = layout.zero_points.then(|| vec![128u8; tl.zero_points_len()]);
    for t in 0..tl.tiles() {
        let tile = &mut out[t * tl.tile_bytes()..(t + 1) * tl.tile_bytes()];
        for c in 0..TILE.min(n - t * TILE) {
            let row = &b[(t * TILE + c) * row_bytes..(t * TILE + c + 1) * row_bytes];
            for st in 0..steps {
                for j in 0..4 {
                    tile[128 * st + 4 * c + j] = row[8 * st + j];
                    tile[128 * st + 64 + 4 * c + j] = row[8 * st + 4 + j];
                }
            }
            for blk in 0..kb {
                s[(t * kb + blk) * TILE + c] = scales[(t * TILE + c) * kb + blk];
                if let (Some(z), Some(src)) = (zps.as_mut(), zero_points) {
                    z[(t * kb + blk) * TILE + c] = src[(t * TILE + c) * kb + blk];
                }
            }
        }
    }
    Ok(Tiled { layout: tl, b: out, scales: s, zero_points: zps })
}

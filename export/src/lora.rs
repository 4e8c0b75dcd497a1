//! `st export --lora`: a PEFT adapter merged into the weights it adapts, W' = W + s·B·A, one
//! linear at a time as the export streams (f32 product by matrixmultiply's sgemm; the merged
//! matrix lives only while its linear is written, then quantized like any other weight).

use crate::error::Result;
use st_checkpoint::{LoraAdapter, TensorRef};
use std::borrow::Cow;

/// A weight as the graph writers read it: as mapped, or merged with its adapter.
pub enum Source<'a> {
    Mapped(TensorRef<'a>),
    Merged { base: TensorRef<'a>, values: Vec<f32> },
}

impl<'a> Source<'a> {
    fn base(&self) -> &TensorRef<'a> {
        match self {
            Source::Mapped(t) | Source::Merged { base: t, .. } => t,
        }
    }
    pub fn shape(&self) -> &'a [usize] {
        self.base().shape
    }
    pub fn numel(&self) -> usize {
        self.base().numel()
    }
    /// Bytes of the source tensor (progress accounting).
    pub fn source_bytes(&self) -> usize {
        self.base().bytes.len()
    }
    pub fn write_f32_le(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Source::Mapped(t) => t.write_f32_le(out),
            Source::Merged { values, .. } => write_chunks(values, out, f32::to_le_bytes),
        }
    }
    pub fn write_f16_le(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Source::Mapped(t) => t.write_f16_le(out),
            Source::Merged { values, .. } => write_chunks(values, out, |v| half::f16::from_f32(v).to_le_bytes()),
        }
    }
    pub fn rows_f32(&self, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        match self {
            Source::Mapped(t) => Ok(t.rows_f32(rows)?),
            Source::Merged { base, values } => {
                let row: usize = base.shape.iter().skip(1).product();
                Ok(values.get(rows.start * row..rows.end * row).unwrap_or_default().to_vec())
            }
        }
    }
    pub fn to_f32(&self) -> Result<Cow<'_, [f32]>> {
        match self {
            Source::Mapped(t) => Ok(t.to_f32()?),
            Source::Merged { values, .. } => Ok(Cow::Borrowed(values)),
        }
    }
}

fn write_chunks<const N: usize>(
    values: &[f32],
    out: &mut impl std::io::Write,
    encode: impl Fn(f32) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16_384 * N);
    for chunk in values.chunks(16_384) {
        buf.clear();
        for &v in chunk {
            buf.extend_from_slice(&encode(v));
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// W + s·B·A for `base` [out, in] with the module's A [r, in] and B [out, r].
pub fn merge(base: &TensorRef<'_>, adapter: &LoraAdapter, module: &str) -> Result<Option<Vec<f32>>> {
    let Some(pair) = adapter.modules.get(module) else { return Ok(None) };
    let mut w = base.to_f32()?.into_owned();
    let [r, k] = pair.a_shape;
    let [n, _] = pair.b_shape;
    let scale = adapter.config.scale() as f32;
    if pair.a.len() != r * k || pair.b.len() != n * r || w.len() != n * k || pair.b_shape[1] != r {
        return Err(crate::error::Error::Checkpoint(st_checkpoint::Error::ShapeMismatch {
            path: adapter.dir.join(st_checkpoint::adapter::WEIGHTS_FILE),
            name: format!("{module}.lora_B.weight"),
            expected: vec![base.shape.first().copied().unwrap_or(0), r],
            found: pair.b_shape.to_vec(),
        }));
    }
    // SAFETY: the slices hold exactly n·r, r·k and n·k elements (shapes validated against the
    // checkpoint by LoraAdapter::validate before the export starts); row-major strides.
    unsafe {
        matrixmultiply::sgemm(
            n,
            r,
            k,
            scale,
            pair.b.as_ptr(),
            r as isize,
            1,
            pair.a.as_ptr(),
            k as isize,
            1,
            1.0,
            w.as_mut_ptr(),
            k as isize,
            1,
        );
    }
    Ok(Some(w))
}

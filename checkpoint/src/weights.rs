//! Safetensors weights, one file or sharded with `model.safetensors.index.json`, memory-mapped
//! with memmap2 and viewed without copies. Tensor names are canonicalised to what transformers
//! writes (`model.layers.…`, `visual.…`): checkpoints that say `model.language_model.…` /
//! `model.visual.…` load the same.

use crate::error::{Error, Result, read_json};
use memmap2::Mmap;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element types a checkpoint may store. Anything else is refused when read as floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    Other(safetensors::Dtype),
}

impl Dtype {
    fn from_st(d: safetensors::Dtype) -> Self {
        match d {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::F16 => Dtype::F16,
            safetensors::Dtype::BF16 => Dtype::BF16,
            other => Dtype::Other(other),
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::Other(d) => d.bitsize().div_ceil(8),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dtype::F32 => f.write_str("F32"),
            Dtype::F16 => f.write_str("F16"),
            Dtype::BF16 => f.write_str("BF16"),
            Dtype::Other(d) => write!(f, "{d:?}"),
        }
    }
}

/// The name transformers writes for a tensor, whatever spelling the file used.
pub fn canonical_name(name: &str) -> Cow<'_, str> {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        Cow::Owned(format!("model.{rest}"))
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        Cow::Owned(format!("visual.{rest}"))
    } else {
        Cow::Borrowed(name)
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    stored_name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// All tensors of a checkpoint, mapped. Cheap to query; the bytes stay in the page cache.
pub struct Weights {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("dir", &self.dir)
            .field("shards", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Map the safetensors of `dir`: the shards named by `model.safetensors.index.json`, else
    /// `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (files, index) = if index_path.is_file() {
            let index: Index = read_json(&index_path)?;
            let mut files: Vec<String> = index.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            (files, Some(index))
        } else if single.is_file() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(Error::NoWeights { dir: dir.to_path_buf() });
        };
        let mut weights = Weights { dir: dir.to_path_buf(), shards: Vec::new(), entries: BTreeMap::new() };
        for file in &files {
            if file.contains('/') || file.contains("..") {
                return Err(Error::InvalidField {
                    path: index_path.clone(),
                    field: "weight_map",
                    reason: format!("shard name {file:?} leaves the checkpoint directory"),
                });
            }
            weights.add_shard(dir.join(file))?;
        }
        if let Some(index) = index {
            for (name, file) in &index.weight_map {
                let canon = canonical_name(name);
                let shard_ok = weights
                    .entries
                    .get(canon.as_ref())
                    .is_some_and(|e| weights.shards[e.shard].path.file_name() == Some(file.as_ref()));
                if !shard_ok {
                    return Err(Error::MissingTensor { name: name.clone(), dir: dir.join(file) });
                }
            }
        }
        Ok(weights)
    }

    /// Map one safetensors file on its own (an adapter, say); names as stored, canonicalised.
    pub fn open_file(path: &Path) -> Result<Self> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut weights = Weights { dir, shards: Vec::new(), entries: BTreeMap::new() };
        weights.add_shard(path.to_path_buf())?;
        Ok(weights)
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile { path: path.clone() }
            } else {
                Error::Io { path: path.clone(), source: e }
            }
        })?;
        // SAFETY: the map is read-only; like every mmap-based loader (candle, safetensors'
        // own examples) we rely on the checkpoint not being truncated while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(&path))?;
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::Safetensors { path: path.clone(), reason: e.to_string() })?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (stored_name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let range = data_start + start..data_start + end;
            if range.end > mmap.len() {
                return Err(Error::Safetensors {
                    path: path.clone(),
                    reason: format!("tensor `{stored_name}` runs past the end of the file"),
                });
            }
            let canon = canonical_name(&stored_name).into_owned();
            if let Some(prev) = self.entries.get(&canon) {
                return Err(Error::DuplicateTensor {
                    path: path.clone(),
                    name: canon,
                    other: self.shards[prev.shard].path.clone(),
                });
            }
            let entry =
                Entry { shard, dtype: Dtype::from_st(info.dtype), shape: info.shape.clone(), range, stored_name };
            self.entries.insert(canon, entry);
        }
        self.shards.push(Shard { path, mmap });
        Ok(())
    }

    /// Each shard's path, its safetensors header bytes and its length.
    pub fn shard_headers(&self) -> impl Iterator<Item = (&Path, &[u8], u64)> {
        self.shards.iter().map(|s| {
            let n = s.mmap.get(..8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
            let end = n.map_or(0, |n| (8 + n as usize).min(s.mmap.len()));
            (s.path.as_path(), &s.mmap[..end], s.mmap.len() as u64)
        })
    }

    /// Canonical names of every tensor, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(canonical_name(name).as_ref())
    }

    /// Tell the kernel the pages of tensor `name` are no longer needed, so a streaming reader
    /// (the exporter) keeps its resident memory near one tensor. The mapping stays valid: the
    /// pages are read from the file again if touched. Unknown names are ignored.
    pub fn release(&self, name: &str) {
        let Some(entry) = self.entries.get(canonical_name(name).as_ref()) else { return };
        let shard = &self.shards[entry.shard];
        let page = 4096;
        let start = entry.range.start.div_ceil(page) * page;
        let end = entry.range.end / page * page;
        if end > start {
            // SAFETY: the map is private and read-only: DONTNEED only drops clean pages, which
            // are re-read from the file on the next access; no data can be lost.
            let _ =
                unsafe { shard.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }

    /// A view of one tensor by its canonical (or stored) name.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let canon = canonical_name(name);
        let entry = self
            .entries
            .get(canon.as_ref())
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), dir: self.dir.clone() })?;
        let shard = &self.shards[entry.shard];
        Ok(TensorRef {
            name: &entry.stored_name,
            path: &shard.path,
            dtype: entry.dtype,
            shape: &entry.shape,
            bytes: &shard.mmap[entry.range.clone()],
        })
    }
}

/// One little-endian element of a float dtype as f32 (`c` holds exactly its bytes).
fn element_f32(dtype: Dtype, c: &[u8]) -> f32 {
    match dtype {
        Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        Dtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
        Dtype::Other(_) => 0.0,
    }
}

/// A borrowed view of one tensor's bytes in the mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The name as stored in the file.
    pub name: &'a str,
    /// The shard file it lives in.
    pub path: &'a Path,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Error unless the shape is exactly `expected`.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape == expected {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                path: self.path.to_path_buf(),
                name: self.name.to_string(),
                expected: expected.to_vec(),
                found: self.shape.to_vec(),
            })
        }
    }

    fn float_dtype(&self) -> Result<Dtype> {
        match self.dtype {
            Dtype::Other(_) => Err(Error::UnsupportedDtype {
                path: self.path.to_path_buf(),
                name: self.name.to_string(),
                found: self.dtype.to_string(),
                expected: "F32, BF16, F16",
            }),
            d => Ok(d),
        }
    }

    /// Stream the values to `out` as little-endian bytes of `encode(value)`, in bounded chunks.
    fn write_converted<const N: usize>(
        &self,
        out: &mut impl std::io::Write,
        encode: impl Fn(f32) -> [u8; N],
    ) -> std::io::Result<()> {
        let dtype = self.float_dtype().map_err(std::io::Error::other)?;
        let size = dtype.size();
        let mut buf = Vec::with_capacity(16_384 * N);
        for chunk in self.bytes.chunks(size * 16_384) {
            buf.clear();
            for c in chunk.chunks_exact(size) {
                buf.extend_from_slice(&encode(element_f32(dtype, c)));
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }

    /// Write the values as little-endian f32 bytes to `out`, converting in bounded chunks.
    pub fn write_f32_le(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.write_converted(out, f32::to_le_bytes)
    }

    /// Write the values as little-endian f16 bytes (round to nearest even), in bounded chunks.
    /// (bf16 → f32 → f16 is exact wherever f16 can hold the value.)
    pub fn write_f16_le(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.write_converted(out, |v| half::f16::from_f32(v).to_le_bytes())
    }

    /// Rows `rows` of a tensor viewed as [shape[0], rest], converted to f32 (bounded memory for
    /// row-wise quantizers).
    pub fn rows_f32(&self, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let dtype = self.float_dtype()?;
        let row_len: usize = self.shape.iter().skip(1).product();
        let size = dtype.size();
        let bytes = self.bytes.get(rows.start * row_len * size..rows.end * row_len * size).unwrap_or_default();
        Ok(bytes.chunks_exact(size).map(|c| element_f32(dtype, c)).collect())
    }

    /// Values as f32: borrowed from the map when stored as aligned f32, converted otherwise.
    pub fn to_f32(&self) -> Result<Cow<'a, [f32]>> {
        match self.float_dtype()? {
            Dtype::F32 => Ok(match bytemuck::try_cast_slice::<u8, f32>(self.bytes) {
                Ok(s) if cfg!(target_endian = "little") => Cow::Borrowed(s),
                _ => Cow::Owned(
                    self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                ),
            }),
            d @ (Dtype::BF16 | Dtype::F16) => {
                Ok(Cow::Owned(self.bytes.chunks_exact(2).map(|c| element_f32(d, c)).collect()))
            }
            Dtype::Other(_) => unreachable!("float_dtype refused it"),
        }
    }

    /// Zero-copy typed view when the stored dtype is `T` and the bytes are aligned for it.
    pub fn as_slice<T: Element>(&self) -> Result<&'a [T]> {
        if self.dtype != T::DTYPE {
            return Err(Error::UnsupportedDtype {
                path: self.path.to_path_buf(),
                name: self.name.to_string(),
                found: self.dtype.to_string(),
                expected: T::NAME,
            });
        }
        bytemuck::try_cast_slice(self.bytes).map_err(|e| Error::Safetensors {
            path: self.path.to_path_buf(),
            reason: format!("tensor `{}` cannot be viewed as {} in place: {e}", self.name, T::NAME),
        })
    }
}

/// Element types with a zero-copy view.
pub trait Element: bytemuck::Pod {
    const DTYPE: Dtype;
    const NAME: &'static str;
}
impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    const NAME: &'static str = "F32";
}
impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    const NAME: &'static str = "F16";
}
impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    const NAME: &'static str = "BF16";
}

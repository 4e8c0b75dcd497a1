//! External data: tensor bytes go to a side file at aligned offsets (so ORT can map large ones),
//! the graph keeps only their location. Written as they come; nothing is held in memory.

use crate::error::{Error, Result};
use crate::onnx::{StringStringEntryProto, TensorProto, tensor_proto};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

/// Tensors at least this large start at a multiple of 64 KiB (the mapping granularity on every
/// OS ORT runs on); smaller ones at a multiple of 64 bytes.
const MAP_THRESHOLD: u64 = 1 << 20;
const MAP_ALIGN: u64 = 64 * 1024;
const SMALL_ALIGN: u64 = 64;

pub struct ExternalData {
    /// File name relative to the graph file (what the graph records).
    location: String,
    path: PathBuf,
    file: BufWriter<std::fs::File>,
    offset: u64,
}

impl ExternalData {
    pub fn create(dir: &Path, location: &str) -> Result<Self> {
        let path = dir.join(location);
        let file = std::fs::File::create(&path).map_err(Error::io(&path))?;
        Ok(Self { location: location.to_string(), path, file: BufWriter::with_capacity(1 << 20, file), offset: 0 })
    }

    /// Write `bytes` and return an initializer that points at them.
    pub fn tensor(
        &mut self,
        name: &str,
        data_type: tensor_proto::DataType,
        dims: &[i64],
        bytes: &[u8],
    ) -> Result<TensorProto> {
        self.tensor_with(name, data_type, dims, bytes.len() as u64, |w| w.write_all(bytes))
    }

    /// Let `write` stream exactly `len` bytes of the tensor (converted chunk by chunk by the caller).
    pub fn tensor_with(
        &mut self,
        name: &str,
        data_type: tensor_proto::DataType,
        dims: &[i64],
        len: u64,
        write: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
    ) -> Result<TensorProto> {
        let align = if len >= MAP_THRESHOLD { MAP_ALIGN } else { SMALL_ALIGN };
        let start = self.offset.div_ceil(align) * align;
        let pad = (start - self.offset) as usize;
        self.file.write_all(&vec![0u8; pad]).map_err(Error::io(&self.path))?;
        let before = self.file.stream_position().map_err(Error::io(&self.path))?;
        write(&mut self.file).map_err(Error::io(&self.path))?;
        let written = self.file.stream_position().map_err(Error::io(&self.path))? - before;
        if written != len {
            return Err(Error::Io {
                path: self.path.clone(),
                source: std::io::Error::other(format!("tensor {name}: wrote {written} bytes, expected {len}")),
            });
        }
        self.offset = start + len;
        let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        Ok(TensorProto {
            name: Some(name.to_string()),
            data_type: Some(data_type as i32),
            dims: dims.to_vec(),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", start.to_string()),
                entry("length", len.to_string()),
            ],
            ..Default::default()
        })
    }

    /// Flush and sync; returns the bytes written.
    pub fn finish(mut self) -> Result<u64> {
        self.file.flush().map_err(Error::io(&self.path))?;
        self.file.get_ref().sync_all().map_err(Error::io(&self.path))?;
        Ok(self.offset)
    }
}

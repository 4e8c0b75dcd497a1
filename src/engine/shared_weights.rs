//! The decoder's weights in memory of st's own, on huge pages, lent to ORT without a copy.
//!
//! A decode step reads every decoder weight once, in place: st's int4 tiles (`ai.st.MatMulInt4`) have no
//! prepacked copy, so the bytes it streams are ORT's initializers. ORT maps the external data file
//! privately, and Linux gives file mappings 4 KiB pages only (`MADV_COLLAPSE` refuses them with `EINVAL`):
//! a step took a TLB miss and a page walk per 4 KiB over 3.4 GB on the 7B. Here the file is read into
//! anonymous memory that the kernel backs with 2 MiB pages ([`HugePageCopy`]) and each of its tensors is
//! handed to ORT as a shared initializer (`AddInitializer`: ORT uses the caller's tensor as it is, where
//! `AddExternalInitializersFromMemory` copies every tensor out of the buffer). The tensors and the copy
//! must outlive the session: [`SharedWeights`] is dropped after it (docs/PERFORMANCE.md#huge-pages).

use super::huge_pages::HugePageCopy;
use crate::error::{Error, Result};
use ort::sys;
use std::path::Path;

/// The copy of a graph's external data file and the ORT tensors over it; released when dropped, which
/// must come after the session that reads them.
pub struct SharedWeights {
    values: Vec<*mut sys::OrtValue>,
    lent_bytes: usize,
    copy: HugePageCopy,
}

// SAFETY: the values are immutable tensors over `copy`'s read-only bytes; ORT reads them from any thread,
// and they are released once, in `drop`.
unsafe impl Send for SharedWeights {}
// SAFETY: as above.
unsafe impl Sync for SharedWeights {}

impl SharedWeights {
    /// Bytes of the tensors lent to ORT.
    pub fn lent_bytes(&self) -> usize {
        self.lent_bytes
    }

    /// Tensors lent to ORT.
    pub fn tensors(&self) -> usize {
        self.values.len()
    }
}

impl Drop for SharedWeights {
    fn drop(&mut self) {
        for &v in &self.values {
            // SAFETY: a value this struct created and still owns; released once.
            unsafe { (ort::api().ReleaseValue)(v) };
        }
    }
}

/// One initializer of the graph stored in its external data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExternalTensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub element: sys::ONNXTensorElementDataType,
    pub offset: usize,
    pub len: usize,
}

/// The operator domain of st's own kernels, which read their weights in place.
const ST_DOMAIN: &str = "ai.st";

/// The graph's initializers held in `location` (as `st export` writes them: one file, an offset and a
/// length each) that only st's own operators (`ai.st`) consume. Those read their weights in place on
/// every call; ORT's kernels that prepack a weight (MLAS's MatMulNBits and Gemm) keep a copy of their
/// own and release the initializer, so lending them theirs would hold it twice. Tensors of a type ORT
/// tensors cannot hold, or whose length does not match their shape, are left for ORT to read (and name).
pub(crate) fn lent_tensors(model: &st_export::onnx::ModelProto, location: &str) -> Vec<ExternalTensor> {
    let Some(graph) = &model.graph else { return Vec::new() };
    let mut only_st = std::collections::HashMap::<&str, bool>::new();
    for node in &graph.node {
        let ours = node.domain.as_deref() == Some(ST_DOMAIN);
        for input in &node.input {
            *only_st.entry(input.as_str()).or_insert(true) &= ours;
        }
    }
    let mut out = Vec::new();
    for t in &graph.initializer {
        if !only_st.get(t.name.as_deref().unwrap_or_default()).copied().unwrap_or(false) {
            continue;
        }
        let get =
            |key: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(key)).and_then(|e| e.value.clone());
        let external = t.data_location == Some(st_export::onnx::tensor_proto::DataLocation::External as i32);
        if !external || get("location").as_deref() != Some(location) {
            continue;
        }
        // No offset means 0 (ONNX's rule); one that does not parse is left for ORT to name.
        let offset = get("offset").map_or(Some(0), |v| v.parse::<usize>().ok());
        let (Some(offset), Some(len)) = (offset, get("length").and_then(|v| v.parse::<usize>().ok())) else {
            continue;
        };
        let Some((element, size)) = t.data_type.and_then(element_type) else { continue };
        let count = t.dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
        if count.and_then(|c| c.checked_mul(size)) != Some(len) {
            continue; // ORT names the mismatch when it reads the tensor itself
        }
        let name = t.name.clone().unwrap_or_default();
        out.push(ExternalTensor { name, dims: t.dims.clone(), element, offset, len });
    }
    out
}

/// ORT's element type and size for an ONNX `TensorProto.DataType`, for the fixed-size types an export
/// writes.
fn element_type(data_type: i32) -> Option<(sys::ONNXTensorElementDataType, usize)> {
    use st_export::onnx::tensor_proto::DataType as D;
    use sys::ONNXTensorElementDataType as E;
    Some(match D::try_from(data_type).ok()? {
        D::Float => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4),
        D::Uint8 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1),
        D::Int8 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1),
        D::Float16 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, 2),
        D::Bfloat16 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, 2),
        D::Int32 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4),
        D::Int64 => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8),
        D::Float8e4m3fn => (E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT8E4M3FN, 1),
        _ => return None,
    })
}

/// Read the external data file of the graph at `graph_path` (`GRAPH.data`, as `st export` writes it)
/// into huge-page memory and lend each of its tensors to the session `builder` will make. `None` (ORT
/// maps the file as usual) where there is no such file or this process gets no huge pages.
pub fn lend_to_session(
    graph_path: &Path,
    builder: &mut ort::session::builder::SessionBuilder,
) -> Result<Option<SharedWeights>> {
    use ort::AsPointer;
    let Some(file_name) = graph_path.file_name().and_then(|n| n.to_str()) else { return Ok(None) };
    let location = format!("{file_name}.data");
    let data_path = graph_path.with_file_name(&location);
    if !data_path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(graph_path).map_err(Error::io(graph_path))?;
    let model = <st_export::onnx::ModelProto as prost::Message>::decode(bytes.as_slice()).map_err(|e| Error::Ort {
        context: graph_path.display().to_string(),
        reason: format!("not an ONNX model: {e}"),
    })?;
    let tensors = lent_tensors(&model, &location);
    if tensors.is_empty() {
        return Ok(None);
    }
    let file_len = std::fs::metadata(&data_path).map_err(Error::io(&data_path))?.len();
    if let Some(t) = tensors.iter().find(|t| t.offset.saturating_add(t.len) as u64 > file_len) {
        return Err(Error::Ort {
            context: data_path.display().to_string(),
            reason: format!(
                "tensor {}: bytes {}..{} past the file's end ({file_len} bytes); the export is damaged, export it again",
                t.name,
                t.offset,
                t.offset.saturating_add(t.len)
            ),
        });
    }
    let ranges: Vec<(usize, usize)> = tensors.iter().map(|t| (t.offset, t.len)).collect();
    let t0 = std::time::Instant::now();
    let Some(copy) = HugePageCopy::read(&data_path, &ranges).map_err(Error::io(&data_path))? else { return Ok(None) };
    let ort_err = |what: String, e: ort::Error| Error::Ort {
        context: data_path.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    let mut memory_info: *mut sys::OrtMemoryInfo = std::ptr::null_mut();
    // SAFETY: ORT writes a new CPU memory description into `memory_info`, released below.
    let status = unsafe {
        (ort::api().CreateCpuMemoryInfo)(
            sys::OrtAllocatorType::OrtDeviceAllocator,
            sys::OrtMemType::OrtMemTypeDefault,
            &mut memory_info,
        )
    };
    // SAFETY: a status ORT just returned.
    unsafe { ort::Error::result_from_status(status) }.map_err(|e| ort_err("CPU memory info".into(), e))?;
    let lent_bytes = tensors.iter().map(|t| t.len).sum();
    let mut shared = SharedWeights { values: Vec::new(), lent_bytes, copy };
    let result: Result<()> = (|| {
        for t in &tensors {
            let data = shared.copy.as_ptr().wrapping_add(t.offset).cast_mut().cast::<std::ffi::c_void>();
            let mut value: *mut sys::OrtValue = std::ptr::null_mut();
            // SAFETY: `t.len` bytes from `data` lie inside the copy (`read` checked), which outlives the
            // value (both in `shared`, the values released first); the shape matches the length.
            let status = unsafe {
                (ort::api().CreateTensorWithDataAsOrtValue)(
                    memory_info,
                    data,
                    t.len,
                    t.dims.as_ptr(),
                    t.dims.len(),
                    t.element,
                    &mut value,
                )
            };
            // SAFETY: a status ORT just returned.
            unsafe { ort::Error::result_from_status(status) }.map_err(|e| ort_err(format!("tensor {}", t.name), e))?;
            shared.values.push(value);
            let name = std::ffi::CString::new(t.name.as_str()).map_err(|e| Error::Ort {
                context: graph_path.display().to_string(),
                reason: format!("initializer name {:?}: {e}", t.name),
            })?;
            // SAFETY: a live value and options; ORT keeps the pointer (not a copy) for the session.
            let status = unsafe { (ort::api().AddInitializer)(builder.ptr_mut(), name.as_ptr(), value) };
            // SAFETY: a status ORT just returned.
            unsafe { ort::Error::result_from_status(status) }.map_err(|e| ort_err(format!("tensor {}", t.name), e))?;
        }
        Ok(())
    })();
    // SAFETY: created above, not used after this.
    unsafe { (ort::api().ReleaseMemoryInfo)(memory_info) };
    result?;
    tracing::debug!(
        "{}: {} tensors, {lent_bytes} bytes lent to ORT from huge pages ({:.2} s)",
        data_path.display(),
        shared.tensors(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Some(shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use st_export::onnx::{GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, tensor_proto};

    fn external(
        name: &str,
        data_type: tensor_proto::DataType,
        dims: &[i64],
        location: &str,
        offset: usize,
        len: usize,
    ) -> TensorProto {
        let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        TensorProto {
            name: Some(name.into()),
            data_type: Some(data_type as i32),
            dims: dims.to_vec(),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", location.into()),
                entry("offset", offset.to_string()),
                entry("length", len.to_string()),
            ],
            ..Default::default()
        }
    }

    fn node(domain: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            domain: Some(domain.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Lent: external tensors in the graph's data file that only st's operators read, with a length that
    /// matches their shape. Not lent: a tensor an ORT kernel also reads (it may prepack and release it),
    /// one in another file, one stored inline, one whose length disagrees with its shape, one whose offset
    /// does not parse (never read as 0).
    #[test]
    fn only_tensors_st_operators_alone_read_are_lent() {
        use tensor_proto::DataType as D;
        let loc = "decoder.onnx.data";
        let mut inline = external("inline", D::Float, &[4], loc, 0, 16);
        inline.data_location = None;
        inline.external_data.clear();
        let mut bad_offset = external("bad_offset", D::Uint8, &[4], loc, 0, 4);
        bad_offset.external_data[1].value = Some("-64".into());
        let graph = GraphProto {
            node: vec![
                node("ai.st", &["x", "tiles", "scales", "shared"]),
                node("com.microsoft", &["x", "shared", "nbits"]),
                node("ai.st", &["elsewhere", "inline", "short", "bad_offset"]),
            ],
            initializer: vec![
                external("tiles", D::Uint8, &[8, 16], loc, 65536, 128),
                external("scales", D::Float16, &[3, 5], loc, 64, 30),
                external("shared", D::Float, &[2], loc, 128, 8),
                external("nbits", D::Uint8, &[4], loc, 192, 4),
                external("elsewhere", D::Uint8, &[4], "vision.onnx.data", 0, 4),
                inline,
                external("short", D::Float, &[4], loc, 256, 15),
                bad_offset,
            ],
            ..Default::default()
        };
        let model = ModelProto { graph: Some(graph), ..Default::default() };
        let lent = lent_tensors(&model, loc);
        let names: Vec<&str> = lent.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["tiles", "scales"]);
        assert_eq!((lent[0].offset, lent[0].len, lent[0].dims.clone()), (65536, 128, vec![8, 16]));
        assert_eq!(lent[1].element, sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
    }
}

//! One-node matmul graphs `Y[M, N] = A[M, K] · Wᵀ` in each form st can write a quantized linear:
//! ORT's MatMulNBits, DequantizeLinear → Gemm, and st's fused ai.st.MatMulInt4 / MatMulFp8 over the
//! same weight bytes. Shared by tests/fused_ops.rs and examples/fused_matmul.rs.
#![allow(dead_code)]

use prost::Message;
use st_export::external::ExternalData;
use st_export::graph::{Attr, Dim, Graph, MS_DOMAIN, ST_DOMAIN};
use st_export::onnx::tensor_proto::DataType;
use std::path::{Path, PathBuf};

/// int4 weights in MatMulNBits' layout with f32 scales.
pub struct Int4Data {
    pub n: usize,
    pub k: usize,
    pub block: usize,
    pub b: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Option<Vec<u8>>,
}

pub enum Int4Form {
    /// com.microsoft.MatMulNBits with this accuracy_level.
    NBits(i64),
    /// ai.st.MatMulInt4 with f32 scales, no accuracy_level (the f32 loop).
    St,
    /// ai.st.MatMulInt4 with the scales stored as f16 and this accuracy_level.
    StF16(i64),
    /// ai.st.MatMulInt4 with f16 scales, accuracy_level 4 and the weights in column tiles (`tile` = 16),
    /// as `st export` writes for the CPU.
    StTiles,
}

pub enum Fp8Form {
    /// DequantizeLinear (float8e4m3fn, per-channel or blocked) → Gemm(transB).
    Dq,
    /// ai.st.MatMulFp8.
    St,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, build: impl FnOnce(&mut Graph, &str) -> String, n: usize, k: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let external = ExternalData::create(dir, &format!("{name}.data")).unwrap();
    let mut g = Graph::new(name, external);
    let a = g.input("A", DataType::Float, &[Dim::Sym("M"), Dim::Fixed(k)]);
    let y = build(&mut g, &a);
    g.output(&y, "Y", DataType::Float, &[Dim::Sym("M"), Dim::Fixed(n)]);
    let (model, external) = g.finish("st tests");
    external.finish().unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

pub fn int4_graph(dir: &Path, name: &str, form: Int4Form, w: &Int4Data) -> PathBuf {
    let (n, k, block) = (w.n, w.k, w.block);
    let kb = k.div_ceil(block);
    write(
        dir,
        name,
        |g, a| {
            let layout = st_kernels::Int4Layout { n, k, block, zero_points: w.zero_points.is_some() };
            let view =
                st_kernels::Int4Weights { layout, b: &w.b, scales: &w.scales, zero_points: w.zero_points.as_deref() };
            let tiled = matches!(form, Int4Form::StTiles).then(|| st_kernels::cpu::tile(&view).unwrap());
            let (bytes, scales, zero_points) = match &tiled {
                Some(t) => (&t.b, &t.scales, t.zero_points.as_ref()),
                None => (&w.b, &w.scales, w.zero_points.as_ref()),
            };
            // MatMulNBits checks B's shape; the tiles are [tiles, tile bytes].
            let shape = match &tiled {
                Some(t) => vec![t.layout.tiles(), t.layout.tile_bytes()],
                None => vec![n, kb, block / 2],
            };
            let b = g.weight("B", DataType::Uint8, &shape, bytes).unwrap();
            let s = match form {
                Int4Form::StF16(_) | Int4Form::StTiles => {
                    let h: Vec<u8> = scales.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
                    g.weight("scales", DataType::Float16, &[scales.len()], &h).unwrap()
                }
                _ => g.weight("scales", DataType::Float, &[n * kb], &f32_bytes(scales)).unwrap(),
            };
            let mut inputs = vec![a.to_string(), b, s];
            if let Some(z) = zero_points {
                inputs.push(g.weight("zero_points", DataType::Uint8, &[z.len()], z).unwrap());
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let (k, n, bl) = (Attr::Int(k as i64), Attr::Int(n as i64), Attr::Int(block as i64));
            match form {
                Int4Form::NBits(level) => g
                    .node_n(
                        "MatMulNBits",
                        "MatMulNBits",
                        MS_DOMAIN,
                        &refs,
                        &[
                            ("K", k),
                            ("N", n),
                            ("bits", Attr::Int(4)),
                            ("block_size", bl),
                            ("accuracy_level", Attr::Int(level)),
                        ],
                        1,
                    )
                    .remove(0),
                Int4Form::St => g
                    .node_n("MatMulInt4", "MatMulInt4", ST_DOMAIN, &refs, &[("K", k), ("N", n), ("block_size", bl)], 1)
                    .remove(0),
                Int4Form::StF16(level) => g
                    .node_n(
                        "MatMulInt4",
                        "MatMulInt4",
                        ST_DOMAIN,
                        &refs,
                        &[("K", k), ("N", n), ("block_size", bl), ("accuracy_level", Attr::Int(level))],
                        1,
                    )
                    .remove(0),
                Int4Form::StTiles => g
                    .node_n(
                        "MatMulInt4",
                        "MatMulInt4",
                        ST_DOMAIN,
                        &refs,
                        &[
                            ("K", k),
                            ("N", n),
                            ("block_size", bl),
                            ("accuracy_level", Attr::Int(4)),
                            ("tile", Attr::Int(st_kernels::cpu::tiles::TILE as i64)),
                        ],
                        1,
                    )
                    .remove(0),
            }
        },
        n,
        k,
    )
}

/// An MLP's `silu(A · gateᵀ) · (A · upᵀ)`, `Y [M, n]`, from two int4 linears of the same shape in column
/// tiles (f16 scales, accuracy_level 4): with an `activation` ("swiglu" as `st export` writes it), one
/// ai.st.MatMulInt4 over `st_kernels::cpu::swiglu_pairs` with that attribute; without, the two ops and ORT's
/// own Sigmoid, Mul, Mul (`st export --separate-mlp`).
pub fn swiglu_graph(dir: &Path, name: &str, activation: Option<&str>, gate: &Int4Data, up: &Int4Data) -> PathBuf {
    let (n, k, block) = (gate.n, gate.k, gate.block);
    let tiled = |w: &Int4Data| {
        let layout = st_kernels::Int4Layout { n, k, block, zero_points: w.zero_points.is_some() };
        st_kernels::cpu::tile(&st_kernels::Int4Weights {
            layout,
            b: &w.b,
            scales: &w.scales,
            zero_points: w.zero_points.as_deref(),
        })
        .unwrap()
    };
    let (g_t, u_t) = (tiled(gate), tiled(up));
    write(
        dir,
        name,
        |g, a| {
            let mut linear = |t: &st_kernels::cpu::Tiled<f32>, prefix: &str, activation: Option<&str>| {
                let b = g
                    .weight(&format!("{prefix}.B"), DataType::Uint8, &[t.layout.tiles(), t.layout.tile_bytes()], &t.b)
                    .unwrap();
                let h: Vec<u8> = t.scales.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
                let s = g.weight(&format!("{prefix}.scales"), DataType::Float16, &[t.scales.len()], &h).unwrap();
                let mut inputs = vec![a.to_string(), b, s];
                if let Some(z) = &t.zero_points {
                    inputs.push(g.weight(&format!("{prefix}.zero_points"), DataType::Uint8, &[z.len()], z).unwrap());
                }
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let mut attrs = vec![
                    ("K", Attr::Int(k as i64)),
                    ("N", Attr::Int(t.layout.0.n as i64)),
                    ("block_size", Attr::Int(block as i64)),
                    ("accuracy_level", Attr::Int(4)),
                    ("tile", Attr::Int(st_kernels::cpu::tiles::TILE as i64)),
                ];
                if let Some(act) = activation {
                    attrs.push(("activation", Attr::Str(act)));
                }
                g.node_n(&format!("{prefix}/MatMulInt4"), "MatMulInt4", ST_DOMAIN, &refs, &attrs, 1).remove(0)
            };
            if activation.is_some() {
                return linear(&st_kernels::cpu::swiglu_pairs(&g_t, &u_t).unwrap(), "gate_up", activation);
            }
            let (gate, up) = (linear(&g_t, "gate", None), linear(&u_t, "up", None));
            let sig = g.node("Sigmoid", "Sigmoid", &[&gate], &[]);
            let silu = g.node("SiLU", "Mul", &[&gate, &sig], &[]);
            g.node("MulUp", "Mul", &[&silu, &up], &[])
        },
        n,
        k,
    )
}

/// fp8 E4M3FN bytes `[n, k]` with f32 scales, per channel (`block` 0) or per `block` inputs.
#[allow(clippy::too_many_arguments)]
pub fn fp8_graph(
    dir: &Path,
    name: &str,
    form: Fp8Form,
    n: usize,
    k: usize,
    block: usize,
    w: &[u8],
    scales: &[f32],
) -> PathBuf {
    write(
        dir,
        name,
        |g, a| match form {
            Fp8Form::Dq => {
                let q = g.weight("W", DataType::Float8e4m3fn, &[n, k], w).unwrap();
                let (s, attrs): (String, Vec<(&str, Attr<'_>)>) = if block == 0 {
                    (
                        g.weight("scales", DataType::Float, &[n], &f32_bytes(scales)).unwrap(),
                        vec![("axis", Attr::Int(0))],
                    )
                } else {
                    (
                        g.weight("scales", DataType::Float, &[n, k.div_ceil(block)], &f32_bytes(scales)).unwrap(),
                        vec![("axis", Attr::Int(1)), ("block_size", Attr::Int(block as i64))],
                    )
                };
                let deq = g.node("Dequantize", "DequantizeLinear", &[&q, &s], &attrs);
                g.node("Gemm", "Gemm", &[a, &deq], &[("transB", Attr::Int(1))])
            }
            Fp8Form::St => {
                let q = g.weight("W", DataType::Uint8, &[n, k], w).unwrap();
                let dims = if block == 0 { vec![n] } else { vec![n, k.div_ceil(block)] };
                let s = g.weight("scales", DataType::Float, &dims, &f32_bytes(scales)).unwrap();
                let attrs =
                    [("K", Attr::Int(k as i64)), ("N", Attr::Int(n as i64)), ("block_size", Attr::Int(block as i64))];
                g.node_n("MatMulFp8", "MatMulFp8", ST_DOMAIN, &[a, &q, &s], &attrs, 1).remove(0)
            }
        },
        n,
        k,
    )
}

/// A session with st's operators registered, on `threads` intra-op threads.
pub fn session(path: &Path, threads: usize) -> ort::session::Session {
    let env = &st::engine::init_ort(None).unwrap().environment;
    let _guard = st::engine::ops::commit_lock();
    ort::session::Session::builder(env)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .with_operators(st::engine::ops::domain().unwrap())
        .unwrap()
        .commit_from_file(path)
        .unwrap()
}

/// Why a session with st's operators cannot be built from `path` (a test of an operator's refusal).
pub fn session_error(path: &Path) -> String {
    let env = &st::engine::init_ort(None).unwrap().environment;
    let _guard = st::engine::ops::commit_lock();
    ort::session::Session::builder(env)
        .unwrap()
        .with_operators(st::engine::ops::domain().unwrap())
        .unwrap()
        .commit_from_file(path)
        .map(|_| ())
        .expect_err("the graph builds no session")
        .to_string()
}

/// Runs `A [m, k]` through the graph, returns Y.
pub fn run(s: &mut ort::session::Session, a: &[f32], m: usize, k: usize) -> Vec<f32> {
    let t = ort::value::Tensor::from_array(([m, k], a.to_vec())).unwrap();
    let out = s.run(ort::inputs!["A" => t]).unwrap();
    out["Y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

/// 8-bit weights in MatMulNBits' layout (`bits` = 8: `b` `[n][k_blocks][block]` bytes, zero points a
/// byte each) with f32 scales: the same fields as the int4 ones.
pub type Int8Data = Int4Data;

pub enum Int8Form {
    /// com.microsoft.MatMulNBits, `bits` = 8, with this accuracy_level.
    NBits(i64),
    /// ai.st.MatMulInt8: column tiles, f16 scales, accuracy_level 4, as `st export` writes lm_head.
    StTiles,
}

pub fn int8_graph(dir: &Path, name: &str, form: Int8Form, w: &Int8Data) -> PathBuf {
    let (n, k, block) = (w.n, w.k, w.block);
    let kb = k.div_ceil(block);
    write(
        dir,
        name,
        |g, a| {
            let (k, n, bl) = (Attr::Int(k as i64), Attr::Int(n as i64), Attr::Int(block as i64));
            let mut inputs = vec![a.to_string()];
            match form {
                Int8Form::NBits(level) => {
                    inputs.push(g.weight("B", DataType::Uint8, &[w.n, kb, block], &w.b).unwrap());
                    inputs.push(g.weight("scales", DataType::Float, &[w.n * kb], &f32_bytes(&w.scales)).unwrap());
                    if let Some(z) = &w.zero_points {
                        inputs.push(g.weight("zero_points", DataType::Uint8, &[z.len()], z).unwrap());
                    }
                    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    let attrs = [
                        ("K", k),
                        ("N", n),
                        ("bits", Attr::Int(8)),
                        ("block_size", bl),
                        ("accuracy_level", Attr::Int(level)),
                    ];
                    g.node_n("MatMulNBits", "MatMulNBits", MS_DOMAIN, &refs, &attrs, 1).remove(0)
                }
                Int8Form::StTiles => {
                    let layout = st_kernels::Int4Layout { n: w.n, k: w.k, block, zero_points: w.zero_points.is_some() };
                    let t = st_kernels::cpu::tile_int8(layout, &w.b, &w.scales, w.zero_points.as_deref()).unwrap();
                    let shape = [t.layout.tiles(), t.layout.tile_bytes()];
                    inputs.push(g.weight("B", DataType::Uint8, &shape, &t.b).unwrap());
                    let h: Vec<u8> = t.scales.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
                    inputs.push(g.weight("scales", DataType::Float16, &[t.scales.len()], &h).unwrap());
                    if let Some(z) = &t.zero_points {
                        inputs.push(g.weight("zero_points", DataType::Uint8, &[z.len()], z).unwrap());
                    }
                    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    let attrs = [
                        ("K", k),
                        ("N", n),
                        ("block_size", bl),
                        ("accuracy_level", Attr::Int(4)),
                        ("tile", Attr::Int(st_kernels::cpu::tiles::TILE as i64)),
                    ];
                    g.node_n("MatMulInt8", "MatMulInt8", ST_DOMAIN, &refs, &attrs, 1).remove(0)
                }
            }
        },
        n,
        k,
    )
}

//! `ai.st.GroupQueryAttention` against ORT's own `com.microsoft.GroupQueryAttention` (the reference: the
//! op it replaces in CPU exports), one-node graphs with the inputs `st export` writes (packed q/k/v,
//! do_rotary = 1 with a cos/sin cache and position ids, seqlens_k, total_sequence_length), random values,
//! Qwen2.5-7B's group of 7 query heads per KV head: a prefill, one decode token after a cache and several
//! tokens after a cache. Both compute in f32 with different GEMM summation orders (ORT: one GEMM per query
//! head; st: one per KV head), so the outputs agree to f32 reassociation: max |difference| ≤ 2e-6 on
//! outputs of magnitude ≲ 1 (sums of ≤ 128 products of magnitude ≤ 1; seen: ≤ 1.8e-7). The present caches agree on every filled position (the rotation is the same
//! f32 formula: ≤ 1e-6). Past and present as one buffer (the engine's binding) is covered end to end by
//! tests/engine.rs against transformers' tokens.

#[path = "common/matmul_graphs.rs"]
mod matmul_graphs;

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use st_export::external::ExternalData;
use st_export::graph::{Attr, Dim, Graph, MS_DOMAIN, ST_DOMAIN};
use st_export::onnx::tensor_proto::DataType;
use std::path::{Path, PathBuf};

const HEADS: usize = 14;
const KV: usize = 2;
const HD: usize = 32;

fn graph(dir: &Path, domain: &str) -> PathBuf {
    let attrs =
        [("num_heads", Attr::Int(HEADS as i64)), ("kv_num_heads", Attr::Int(KV as i64)), ("do_rotary", Attr::Int(1))];
    graph_with(dir, domain, if domain == ST_DOMAIN { "st" } else { "ort" }, &attrs)
}

fn graph_with(dir: &Path, domain: &str, name: &str, attrs: &[(&str, Attr<'_>)]) -> PathBuf {
    let external = ExternalData::create(dir, &format!("{name}.data")).unwrap();
    let mut g = Graph::new(name, external);
    let s = Dim::Sym("s");
    let width = (HEADS + 2 * KV) * HD;
    let kv_dims = [Dim::Fixed(1), Dim::Fixed(KV), Dim::Sym("past"), Dim::Fixed(HD)];
    let present_dims = [Dim::Fixed(1), Dim::Fixed(KV), Dim::Sym("present"), Dim::Fixed(HD)];
    let q = g.input("query", DataType::Float, &[Dim::Fixed(1), s, Dim::Fixed(width)]);
    let pk = g.input("past_key", DataType::Float, &kv_dims);
    let pv = g.input("past_value", DataType::Float, &kv_dims);
    let seqlens = g.input("seqlens_k", DataType::Int32, &[Dim::Fixed(1)]);
    let total = g.input("total_sequence_length", DataType::Int32, &[]);
    let cos = g.input("cos_cache", DataType::Float, &[Dim::Sym("rows"), Dim::Fixed(HD / 2)]);
    let sin = g.input("sin_cache", DataType::Float, &[Dim::Sym("rows"), Dim::Fixed(HD / 2)]);
    let pos = g.input("position_ids", DataType::Int64, &[Dim::Fixed(1), s]);
    let inputs = [q.as_str(), "", "", &pk, &pv, &seqlens, &total, &cos, &sin, &pos];
    let out = g.node_n("attn", "GroupQueryAttention", domain, &inputs, attrs, 3);
    g.output(&out[0], "out", DataType::Float, &[Dim::Fixed(1), s, Dim::Fixed(HEADS * HD)]);
    g.output(&out[1], "present_key", DataType::Float, &present_dims);
    g.output(&out[2], "present_value", DataType::Float, &present_dims);
    let (model, external) = g.finish("st tests");
    external.finish().unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

struct Call {
    tokens: usize,
    past: usize,
    /// Positions of the past buffers (≥ past).
    capacity: usize,
    query: Vec<f32>,
    past_k: Vec<f32>,
    past_v: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    positions: Vec<i64>,
}

impl Call {
    fn new(rng: &mut ChaCha8Rng, tokens: usize, past: usize, capacity: usize) -> Self {
        let rows = past + 2 * tokens;
        let angle: Vec<f32> = (0..rows * HD / 2).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let cache = |rng: &mut ChaCha8Rng| (0..KV * capacity * HD).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Call {
            tokens,
            past,
            capacity,
            query: (0..tokens * (HEADS + 2 * KV) * HD).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            past_k: cache(rng),
            past_v: cache(rng),
            cos: angle.iter().map(|a| a.cos()).collect(),
            sin: angle.iter().map(|a| a.sin()).collect(),
            // As the exporter's per-call tables are looked up: row i is token i.
            positions: (0..tokens as i64).collect(),
        }
    }

    /// (out, present_key, present_value)
    fn run(&self, s: &mut ort::session::Session) -> [Vec<f32>; 3] {
        self.try_run(s).unwrap()
    }

    fn try_run(&self, s: &mut ort::session::Session) -> ort::Result<[Vec<f32>; 3]> {
        self.try_run_with_total(s, self.past + self.tokens)
    }

    /// With `total` as seqlens_k + 1 and total_sequence_length.
    fn try_run_with_total(&self, s: &mut ort::session::Session, total: usize) -> ort::Result<[Vec<f32>; 3]> {
        use ort::value::Tensor;
        let t = self.tokens;
        let kv = [1, KV, self.capacity, HD];
        let rows = self.cos.len() / (HD / 2);
        let inputs = ort::inputs![
            "query" => Tensor::from_array(([1, t, (HEADS + 2 * KV) * HD], self.query.clone())).unwrap(),
            "past_key" => Tensor::from_array((kv, self.past_k.clone())).unwrap(),
            "past_value" => Tensor::from_array((kv, self.past_v.clone())).unwrap(),
            "seqlens_k" => Tensor::from_array(([1], vec![total as i32 - 1])).unwrap(),
            "total_sequence_length" => Tensor::from_array(((), vec![total as i32])).unwrap(),
            "cos_cache" => Tensor::from_array(([rows, HD / 2], self.cos.clone())).unwrap(),
            "sin_cache" => Tensor::from_array(([rows, HD / 2], self.sin.clone())).unwrap(),
            "position_ids" => Tensor::from_array(([1, t], self.positions.clone())).unwrap(),
        ];
        let out = s.run(inputs)?;
        Ok(["out", "present_key", "present_value"].map(|n| out[n].try_extract_tensor::<f32>().unwrap().1.to_vec()))
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn st_group_query_attention_gives_ort_s_outputs_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ort_gqa = matmul_graphs::session(&graph(tmp.path(), MS_DOMAIN), 2);
    let mut st_gqa = matmul_graphs::session(&graph(tmp.path(), ST_DOMAIN), 2);
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // A prefill over several of st's token blocks, one decode token after 40 cached, 4 tokens after 25,
    // in buffers of 64 positions (the engine's form: the present is the past's buffer) and in buffers
    // holding just the past (the growing form: the present is a longer one).
    for (tokens, past, capacity) in [(37, 0, 64), (1, 40, 64), (4, 25, 64), (37, 0, 0), (1, 40, 40), (4, 25, 30)] {
        let call = Call::new(&mut rng, tokens, past, capacity);
        let [want, want_k, want_v] = call.run(&mut ort_gqa);
        let [got, got_k, got_v] = call.run(&mut st_gqa);
        let d = max_diff(&got, &want);
        eprintln!("{tokens} tokens after {past} (buffers of {capacity}): out differs by {d:.2e}");
        assert!(d <= 2e-6, "{tokens} tokens after {past}: out differs by {d}");
        let total = past + tokens;
        let present = capacity.max(total);
        assert_eq!((got_k.len(), want_k.len()), (KV * present * HD, KV * present * HD), "present length");
        for g in 0..KV {
            let filled = g * present * HD..(g * present + total) * HD;
            let (dk, dv) = (
                max_diff(&got_k[filled.clone()], &want_k[filled.clone()]),
                max_diff(&got_v[filled.clone()], &want_v[filled]),
            );
            assert!(dk <= 1e-6 && dv == 0.0, "{tokens} tokens after {past}: kv head {g} cache differs by {dk} / {dv}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_op_and_input() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st_gqa = matmul_graphs::session(&graph(tmp.path(), ST_DOMAIN), 1);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // seqlens_k + 1 says 30 positions, but 40 are new.
    let call = Call::new(&mut rng, 40, 0, 64);
    let err = call.try_run_with_total(&mut st_gqa, 30).expect_err("fewer positions than tokens").to_string();
    assert!(err.contains("GroupQueryAttention") && err.contains("shorter than the 40 new tokens"), "{err}");
    let mut far = Call::new(&mut rng, 2, 3, 8);
    far.positions = vec![0, 10_000];
    let err = far.try_run(&mut st_gqa).expect_err("position outside the tables").to_string();
    assert!(err.contains("position_ids[1] = 10000"), "{err}");
}

/// What st's op does not implement is refused when the session is built, naming the attribute: no
/// rotation (`do_rotary` absent means 0, as in ORT), interleaved rotation.
#[test]
fn unimplemented_attributes_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let heads = || [("num_heads", Attr::Int(HEADS as i64)), ("kv_num_heads", Attr::Int(KV as i64))];
    let [h, kv] = heads();
    let interleaved = [h, kv, ("do_rotary", Attr::Int(1)), ("rotary_interleaved", Attr::Int(1))];
    let plain = heads();
    for (name, attrs, needle) in
        [("norotary", &plain[..], "do_rotary = 0"), ("interleaved", &interleaved[..], "rotary_interleaved = 1")]
    {
        let err = matmul_graphs::session_error(&graph_with(tmp.path(), ST_DOMAIN, name, attrs));
        assert!(err.contains("ai.st.GroupQueryAttention") && err.contains(needle), "{err}");
    }
}

//! Recipes: the default 7B recipe parses, per-pattern overrides reach the graph, bad recipes are
//! named, and an overridden graph still runs.

mod common;

use common::pipeline::{export, prefill, rel_err};
use common::{golden, read_npy};
use prost::Message;
use st_export::{Precision, Recipe};
use std::path::Path;

fn recipe(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn default_7b_recipe() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spatialthinker-7b.toml");
    let opts = Recipe::from_file(&path).unwrap().options(&path).unwrap();
    assert_eq!(opts.precision, Precision::Int4);
    assert_eq!((opts.linear.lm_head, opts.embed, opts.vision), (Precision::Int8, Precision::Fp16, Precision::Fp16));
    assert_eq!((opts.linear.int4.block, opts.linear.int4.symmetric, opts.linear.accuracy_level), (128, true, 4));
    // `st export --precision int4` with no recipe writes the recipe's int4 scheme.
    let plain = st_export::ExportOptions::new(Precision::Int4);
    assert_eq!((plain.linear.int4, plain.linear.accuracy_level), (opts.linear.int4, opts.linear.accuracy_level));
    // st's ops, st's attention; `op = "nbits"` asks for a graph a stock ONNX Runtime runs: ORT's attention.
    assert_eq!((opts.linear.int4_op, opts.attention), (st_export::Int4Op::St, st_export::Attention::StGroupQuery));
    let (_d, nbits) = recipe("precision = \"int4\"\n[int4]\nop = \"nbits\"\n");
    let nbits = Recipe::from_file(&nbits).unwrap().options(&nbits).unwrap();
    assert_eq!(nbits.attention, st_export::Attention::GroupQuery);
}

/// Op type and `bits` of the node computing `linear` in the exported decoder.
fn linear_op(dir: &Path, linear: &str) -> (String, Option<i64>) {
    let model = st_export::onnx::ModelProto::decode(&*std::fs::read(dir.join("decoder.onnx")).unwrap()).unwrap();
    let graph = model.graph.unwrap();
    let node = graph
        .node
        .iter()
        .find(|n| {
            n.name.as_deref().is_some_and(|s| {
                s.starts_with(&format!("{linear}/"))
                    && !s.ends_with("AddBias")
                    && n.op_type.as_deref() != Some("Reshape")
                    && n.op_type.as_deref() != Some("Shape")
                    && n.op_type.as_deref() != Some("Concat")
            })
        })
        .unwrap_or_else(|| panic!("no node for {linear}"));
    let bits = node.attribute.iter().find(|a| a.name.as_deref() == Some("bits")).and_then(|a| a.i);
    (node.op_type.clone().unwrap(), bits)
}

#[test]
fn overrides_reach_the_graph_and_it_runs() {
    let (_d, path) = recipe(
        r#"precision = "int4"
lm_head = "fp32"
[int4]
accuracy_level = 0
[[override]]
pattern = "model.layers.1.mlp.*"
precision = "int8"
[[override]]
pattern = "model.layers.0.self_attn.[qk]_proj"
precision = "fp32"
"#,
    );
    let opts = Recipe::from_file(&path).unwrap().options(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut g = export("tiny", out.path(), &opts);
    let dir = out.path().join("tiny");
    assert_eq!(linear_op(&dir, "model.layers.1.mlp.down_proj"), ("MatMulNBits".into(), Some(8)));
    // int4 on the CPU: st's ai.st.MatMulInt4 (no `bits` attribute) unless the recipe says op = "nbits".
    assert_eq!(linear_op(&dir, "model.layers.0.mlp.down_proj"), ("MatMulInt4".into(), None));
    assert_eq!(linear_op(&dir, "model.layers.0.self_attn.q_proj").0, "Gemm");
    assert_eq!(linear_op(&dir, "model.layers.0.self_attn.v_proj"), ("MatMulInt4".into(), None));
    let manifest = st::st_checkpoint::Manifest::from_dir(&dir).unwrap();
    assert_eq!(manifest.graphs["decoder"].precision["override model.layers.1.mlp.*"], "int8");
    // Mixed precisions still compute the model: close to the unquantized reference at int4 error.
    let want: ndarray::Array2<f32> = read_npy(&golden("tiny/logits.npy"));
    let (logits, _) = prefill(&mut g, "tiny", want.nrows() as i64);
    assert!(logits.iter().all(|v| v.is_finite()));
    assert!(rel_err(&logits, &want) < 0.3, "{}", rel_err(&logits, &want));

    // op = "nbits": com.microsoft.MatMulNBits (bits 4).
    let (_d, path) = recipe("precision = \"int4\"\n[int4]\nop = \"nbits\"\n");
    let opts = Recipe::from_file(&path).unwrap().options(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    export("tiny", out.path(), &opts);
    let dir = out.path().join("tiny");
    assert_eq!(linear_op(&dir, "model.layers.0.mlp.down_proj"), ("MatMulNBits".into(), Some(4)));
}

#[test]
fn bad_recipes_are_named() {
    for (text, needle) in [
        ("precision = \"int3\"", "int3"),
        ("presicion = \"int4\"", "presicion"),
        ("[[override]]\npattern = \"a[\"\nprecision = \"int8\"", "pattern"),
        ("[int4]\nop = \"mlas\"", "int4.op"),
    ] {
        let (_d, path) = recipe(text);
        let e = Recipe::from_file(&path).and_then(|r| r.options(&path)).unwrap_err().to_string();
        assert!(e.contains("r.toml") && e.contains(needle), "{e}");
    }
    // The vision tower cannot be quantized by an override.
    let (_d, path) = recipe("[[override]]\npattern = \"visual.blocks.*\"\nprecision = \"int4\"");
    let opts = Recipe::from_file(&path).unwrap().options(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = st_export::export(&common::model("tiny"), &out.path().join("m"), &opts).unwrap_err().to_string();
    assert!(e.contains("vision tower") && e.contains("visual.blocks.0"), "{e}");
    // st's op reads blocks of 32 and up; MatMulNBits also takes 16.
    let (_d, path) = recipe("precision = \"int4\"\n[int4]\nblock = 16\n");
    let opts = Recipe::from_file(&path).unwrap().options(&path).unwrap();
    let e = st_export::export(&common::model("tiny"), &out.path().join("b16"), &opts).unwrap_err().to_string();
    assert!(e.contains("int4 block size") && e.contains("--int4-op nbits"), "{e}");
}

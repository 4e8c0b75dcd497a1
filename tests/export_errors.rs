//! Bad checkpoints and failed exports: a clear error naming the tensor or file, and nothing left
//! in (or beside) the output directory.

mod common;

use common::{copy_model, edit_config, edit_tensors};
use st_export::{ExportOptions, Precision, export};
use std::path::Path;

fn fails_cleanly(src: &Path, opts: &ExportOptions, needles: &[&str]) {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("model");
    let e = export(src, &out, opts).unwrap_err().to_string();
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
    assert!(!out.exists(), "{} was created", out.display());
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn unknown_architecture() {
    let d = copy_model("tiny");
    edit_config(d.path(), |v| v["model_type"] = "qwen2_vl".into());
    fails_cleanly(d.path(), &ExportOptions::default(), &["qwen2_vl", "config.json"]);
}

#[test]
fn missing_tensor() {
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| (n != "visual.blocks.1.attn.qkv.bias").then_some((dt, s, b)));
    fails_cleanly(d.path(), &ExportOptions::default(), &["visual.blocks.1.attn.qkv.bias"]);
}

#[test]
fn wrong_shape_and_dtype() {
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| {
        if n == "model.layers.1.mlp.down_proj.weight" { Some((dt, vec![s[1], s[0]], b)) } else { Some((dt, s, b)) }
    });
    fails_cleanly(
        d.path(),
        &ExportOptions::default(),
        &["model.layers.1.mlp.down_proj.weight", "[64, 128]", "model.safetensors"],
    );
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| {
        if n == "visual.merger.ln_q.weight" {
            Some((safetensors::Dtype::U8, vec![s[0] * 2], b))
        } else {
            Some((dt, s, b))
        }
    });
    fails_cleanly(d.path(), &ExportOptions::default(), &["visual.merger.ln_q.weight"]);
}

#[test]
fn truncated_shard() {
    let d = copy_model("tiny-legacy");
    let shard = d.path().join("model-00001-of-00003.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    fails_cleanly(d.path(), &ExportOptions::default(), &["model-00001-of-00003.safetensors"]);
}

#[test]
fn failure_midway_removes_the_partial_directory() {
    // An int4 block size is checked where it is used, after the vision graph was written.
    let mut opts = ExportOptions { precision: Precision::Int4, ..Default::default() };
    opts.linear.int4.block = 48;
    fails_cleanly(&common::model("tiny"), &opts, &["int4 block size", "48"]);
}

#[test]
fn existing_output_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let e = export(&common::model("tiny"), parent.path(), &ExportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
}

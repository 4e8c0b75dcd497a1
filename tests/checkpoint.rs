//! Checkpoint loading: all on-disk layouts of the fixtures, the real 7B config, and bad input.

mod common;

use common::{copy_model, edit_config, edit_tensors, model};
use st::st_checkpoint::{Checkpoint, Error, ModelConfig, layout};
use std::path::Path;

#[test]
fn every_fixture_layout_loads_and_agrees() {
    let tiny = Checkpoint::open(model("tiny")).unwrap();
    let legacy = Checkpoint::open(model("tiny-legacy")).unwrap();
    let b = Checkpoint::open(model("tiny-b")).unwrap();
    let b_names = Checkpoint::open(model("tiny-b-lm-names")).unwrap();

    // Nested (transformers 5) and flat (4.x, rope_scaling) configs resolve to the same model.
    let mut legacy_cfg = legacy.config.clone();
    legacy_cfg.source_dtype = tiny.config.source_dtype.clone();
    assert_eq!(tiny.config, legacy_cfg);
    assert_eq!(b.config, b_names.config);

    let t = &tiny.config.text;
    assert_eq!((t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads), (64, 2, 4, 2));
    assert_eq!((t.head_dim, t.mrope_section.as_slice(), t.rope_theta), (16, &[2, 3, 3][..], 1e6));
    assert_eq!(tiny.config.vision.fullatt_block_indexes, vec![2]);
    assert!(!tiny.config.tie_word_embeddings);
    let tb = &b.config.text;
    assert_eq!(
        (tb.hidden_size, tb.num_hidden_layers, tb.head_dim, tb.mrope_section.as_slice()),
        (96, 3, 32, &[4, 6, 6][..])
    );
    assert!(b.config.tie_word_embeddings);
    assert_eq!(b.config.vision.window_size, 56);

    // Sharded f32 and single-file bf16 hold the same values (the bf16 weights are exact in f32).
    assert_eq!(legacy.weights.len(), tiny.weights.len());
    for name in tiny.weights.names() {
        let a = tiny.weights.get(name).unwrap();
        let l = legacy.weights.get(name).unwrap();
        assert_eq!(a.shape, l.shape, "{name}");
        assert_eq!(a.to_f32().unwrap(), l.to_f32().unwrap(), "{name}");
    }
    // `model.language_model.*` / `model.visual.*` names are served under the canonical names.
    for spec in layout::expected_tensors(&b.config) {
        let x = b.weights.get(&spec.name).unwrap();
        let y = b_names.weights.get(&spec.name).unwrap();
        assert_eq!(x.bytes, y.bytes, "{}", spec.name);
    }
    assert!(b_names.weights.get("model.language_model.norm.weight").is_ok());
    assert!(b_names.weights.get("lm_head.weight").is_err(), "tied: no lm_head");
}

#[test]
fn zero_copy_views_match_converted_values() {
    let legacy = Checkpoint::open(model("tiny-legacy")).unwrap();
    let w = legacy.weights.get("model.norm.weight").unwrap();
    let view: &[f32] = w.as_slice::<f32>().unwrap();
    assert_eq!(view, &*w.to_f32().unwrap());
    let tiny = Checkpoint::open(model("tiny")).unwrap();
    let bf = tiny.weights.get("model.norm.weight").unwrap();
    assert!(bf.as_slice::<f32>().is_err(), "bf16 tensor is not an f32 view");
    assert_eq!(bf.as_slice::<half::bf16>().unwrap().len(), 64);
}

#[test]
fn generation_and_processor_configs() {
    let tiny = Checkpoint::open(model("tiny")).unwrap();
    let tok = st::prompt::TextTokenizer::from_dir(&model("tiny")).unwrap();
    assert_eq!(tiny.generation.eos_token_ids, vec![tok.special.im_end]);
    assert_eq!(tiny.generation.pad_token_id, Some(tok.special.endoftext));
    assert_eq!(tiny.config.image_token_id, tok.special.image_pad);
    assert_eq!(tiny.config.vision_start_token_id, tok.special.vision_start);
    assert_eq!((tiny.image_processor.min_pixels, tiny.image_processor.max_pixels), (3136, 12_845_056));
}

#[test]
fn real_7b_config_resolves() {
    // Qwen2.5-VL-7B-Instruct's own config.json (flat layout), as SpatialThinker-7B ships it.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spatialthinker-7b/config.json");
    let c = ModelConfig::from_file(&path).unwrap();
    assert_eq!((c.text.hidden_size, c.text.num_hidden_layers, c.text.num_attention_heads), (3584, 28, 28));
    assert_eq!((c.text.num_key_value_heads, c.text.head_dim, c.text.intermediate_size), (4, 128, 18944));
    assert_eq!((c.text.vocab_size, c.text.mrope_section.clone()), (152064, vec![16, 24, 24]));
    assert_eq!((c.vision.depth, c.vision.hidden_size, c.vision.patch_values()), (32, 1280, 1176));
    assert_eq!(c.vision.fullatt_block_indexes, vec![7, 15, 23, 31]);
    assert_eq!(c.image_token_id, 151655);
    // 7B parameter count from the layout alone: a check on the tensor list.
    let params: usize = layout::expected_tensors(&c).iter().map(|s| s.shape.iter().product::<usize>()).sum();
    assert!((8_200_000_000..8_350_000_000).contains(&params), "{params}");
}

fn err_text(r: Result<Checkpoint, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_architecture_is_named() {
    let d = copy_model("tiny");
    edit_config(d.path(), |v| v["model_type"] = "llava".into());
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("llava") && e.contains("config.json") && e.contains("qwen2_5_vl"), "{e}");
}

#[test]
fn inconsistent_config_is_named() {
    let d = copy_model("tiny");
    edit_config(d.path(), |v| v["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([2, 2, 2]));
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("mrope_section"), "{e}");
    let d = copy_model("tiny");
    edit_config(d.path(), |v| {
        v["text_config"].as_object_mut().unwrap().remove("hidden_size");
    });
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
}

#[test]
fn corrupt_or_missing_files_are_named() {
    let d = copy_model("tiny");
    std::fs::write(d.path().join("config.json"), "{not json").unwrap();
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");

    let d = copy_model("tiny");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("no weights"), "{e}");

    let e = err_text(Checkpoint::open(Path::new("/nonexistent/ckpt")));
    assert!(e.contains("/nonexistent/ckpt"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| (n != "model.layers.1.mlp.up_proj.weight").then_some((dt, s, b)));
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| {
        if n == "model.layers.0.self_attn.k_proj.weight" {
            let half = b.len() / 2;
            Some((dt, vec![s[0] / 2, s[1]], b[..half].to_vec()))
        } else {
            Some((dt, s, b))
        }
    });
    let e = err_text(Checkpoint::open(d.path()));
    assert!(
        e.contains("k_proj.weight")
            && e.contains("[16, 64]")
            && e.contains("[32, 64]")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let d = copy_model("tiny");
    edit_tensors(d.path(), |n, dt, s, b| {
        if n == "model.norm.weight" { Some((safetensors::Dtype::I16, s, b)) } else { Some((dt, s, b)) }
    });
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("model.norm.weight") && e.contains("I16"), "{e}");
}

#[test]
fn truncated_shard_is_named() {
    let d = copy_model("tiny-legacy");
    let shard = d.path().join("model-00002-of-00003.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(len - 100).unwrap();
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("model-00002-of-00003.safetensors") && e.contains("truncated"), "{e}");

    let d = copy_model("tiny");
    std::fs::write(d.path().join("model.safetensors"), b"").unwrap();
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn index_pointing_at_missing_shard_is_named() {
    let d = copy_model("tiny-legacy");
    std::fs::remove_file(d.path().join("model-00003-of-00003.safetensors")).unwrap();
    let e = err_text(Checkpoint::open(d.path()));
    assert!(e.contains("model-00003-of-00003.safetensors"), "{e}");
}

//! Prompt text and token ids against the HF processor, with the tiny tokenizers and the real
//! Qwen2.5-VL vocabulary (fetched by `make qwen-tokenizer`).

mod common;

use common::{QUESTION, golden, image, model, read_json, read_npy};
use ndarray::Array2;
use st::preprocess::Preprocessor;
use st::prompt::{PromptBuilder, TextTokenizer};
use std::path::{Path, PathBuf};

fn golden_ids(path: &Path) -> Vec<u32> {
    let a: Array2<i64> = read_npy(path);
    a.iter().map(|&x| x as u32).collect()
}

/// Build the SpatialThinker prompt for the golden image exactly as the runtime will.
fn runtime_ids(pb: &PromptBuilder) -> (String, Vec<u32>) {
    let ckpt = st::st_checkpoint::Checkpoint::open(model("tiny")).unwrap();
    let mut pre = Preprocessor::from_checkpoint(&ckpt);
    pre.options.pixels.max_pixels = 37632;
    let img = pre.load(&image("chelsea.png")).unwrap();
    let (w, h) = img.original_size;
    let text = pb.spatialthinker_prompt(w, h, QUESTION).unwrap();
    let ids = pb.encode(&text, &[img.num_image_tokens(2)]).unwrap();
    (text, ids)
}

#[test]
fn tiny_tokenizers_match_the_processor() {
    for name in ["tiny", "tiny-b", "tiny-legacy", "tiny-b-lm-names"] {
        let g = if name.starts_with("tiny-b") { "tiny-b" } else { "tiny" };
        let pb = PromptBuilder::from_dir(&model(name)).unwrap();
        let (text, ids) = runtime_ids(&pb);
        let want_text = std::fs::read_to_string(golden(&format!("{g}/prompt.txt"))).unwrap();
        assert_eq!(text, want_text, "{name}: rendered prompt");
        assert_eq!(ids, golden_ids(&golden(&format!("{g}/input_ids.npy"))), "{name}: input_ids");
    }
}

fn qwen_tokenizer_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/qwen2.5-vl-tokenizer");
    assert!(dir.join("tokenizer.json").is_file(), "the real Qwen vocabulary is missing: run `make qwen-tokenizer`");
    dir
}

#[test]
fn real_qwen_tokenizer_matches_the_processor() {
    let dir = qwen_tokenizer_dir();
    let pb = PromptBuilder::from_dir(&dir).unwrap();
    let s = pb.tokenizer.special;
    // The published ids, read from the vocabulary rather than assumed.
    assert_eq!((s.endoftext, s.im_start, s.im_end), (151643, 151644, 151645));
    assert_eq!((s.vision_start, s.vision_end, s.image_pad), (151652, 151653, 151655));
    let (text, ids) = runtime_ids(&pb);
    assert_eq!(text, std::fs::read_to_string(golden("qwen-tokenizer/prompt.txt")).unwrap());
    assert_eq!(ids, golden_ids(&golden("qwen-tokenizer/input_ids.npy")));

    let tok = TextTokenizer::from_dir(&dir).unwrap();
    for sample in read_json(&golden("qwen-tokenizer/samples.json")).as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let want: Vec<u32> = sample["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "round trip {text:?}");
    }
}

#[test]
fn questions_are_checked() {
    let pb = PromptBuilder::from_dir(&model("tiny")).unwrap();
    let e = pb.spatialthinker_prompt(10, 10, "   ").unwrap_err().to_string();
    assert!(e.contains("question") && e.contains("empty"), "{e}");
    let long = "x".repeat(st::prompt::MAX_QUESTION_BYTES + 1);
    let e = pb.spatialthinker_prompt(10, 10, &long).unwrap_err().to_string();
    assert!(e.contains("question") && e.contains("limit"), "{e}");
    let e = pb.encode("no image here", &[4]).unwrap_err().to_string();
    assert!(e.contains("0 image placeholders") && e.contains("1 images"), "{e}");
}

#[test]
fn broken_template_and_tokenizer_are_named() {
    let d = common::copy_model("tiny");
    std::fs::write(d.path().join("chat_template.jinja"), "{% for m in messages %}{{ m.role }").unwrap();
    let e = PromptBuilder::from_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("chat_template.jinja"), "{e}");
    let d = common::copy_model("tiny");
    std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
    let e = PromptBuilder::from_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

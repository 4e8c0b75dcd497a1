//! The library path end to end: an exported model loaded by `Engine`, a frame encoded from an
//! image file, greedy generation — the transformers golden tokens, for both tiny shapes and
//! both attention forms. Bad input gives errors and the engine keeps working.

mod common;

use common::{QUESTION, golden, image, model, read_npy};
use st::engine::{Engine, SessionOptions};

fn engine(name: &str, attention: st_export::Attention, out: &std::path::Path) -> Engine {
    let dir = out.join(name);
    let opts = st_export::ExportOptions { attention, ..Default::default() };
    st_export::export(&model(name), &dir, &opts).unwrap();
    let mut e = Engine::load(&dir, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    e.preprocessor.options.pixels.max_pixels = 37632; // the goldens' image budget
    e
}

#[test]
fn greedy_generation_reproduces_transformers() {
    for name in ["tiny", "tiny-b"] {
        for attention in [st_export::Attention::GroupQuery, st_export::Attention::Standard] {
            let tmp = tempfile::tempdir().unwrap();
            let mut e = engine(name, attention, tmp.path());
            let frame = e.encode_image(&image("chelsea.png")).unwrap();
            let want: ndarray::Array1<i64> = read_npy(&golden(&format!("{name}/greedy_tokens.npy")));
            let ids: ndarray::Array2<i64> = read_npy(&golden(&format!("{name}/input_ids.npy")));
            let out = e.generate(&frame, QUESTION, want.len()).unwrap();
            assert_eq!(out.prompt_tokens, ids.len(), "{name}");
            let got: Vec<i64> = out.token_ids.iter().map(|&t| t as i64).collect();
            assert_eq!(got, want.to_vec(), "{name} {attention:?}");
            // The same frame answers a second question without re-encoding.
            let again = e.generate(&frame, QUESTION, 4).unwrap();
            assert_eq!(again.token_ids[..], out.token_ids[..4], "{name}");
        }
    }
}

#[test]
fn bad_input_is_an_error_and_the_engine_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let junk = tmp.path().join("junk.jpg");
    std::fs::write(&junk, b"not an image").unwrap();
    let err = e.encode_image(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.jpg"), "{err}");
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    let err = e.generate(&frame, "  ", 4).unwrap_err().to_string();
    assert!(err.contains("question"), "{err}");
    let err = e.generate(&frame, QUESTION, 1_000_000).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    assert_eq!(e.generate(&frame, QUESTION, 3).unwrap().token_ids.len(), 3);
}

#[test]
fn bad_model_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    st_export::export(&model("tiny"), &dir, &Default::default()).unwrap();
    std::fs::remove_file(dir.join("vision.onnx")).unwrap();
    let err = Engine::load(&dir, &SessionOptions::default()).err().unwrap().to_string();
    assert!(err.contains("vision.onnx"), "{err}");
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let err = Engine::load(&dir, &SessionOptions::default()).err().unwrap().to_string();
    assert!(err.contains("format_version") && err.contains("re-export"), "{err}");
}

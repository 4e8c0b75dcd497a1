//! Every input a fuzz target found a defect with (`fuzz/regressions/TARGET/NAME`), run through that
//! target's own check (fuzz/src/checks.rs, included here) in the ordinary test suite, so a fixed
//! defect stays fixed without libFuzzer. docs/RELIABILITY.md#fuzzing lists them.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

#[test]
fn image_inputs_that_crashed_are_clear_errors() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny");
    let config = st_checkpoint::ModelConfig::from_dir(&tiny).unwrap();
    let pre = st::preprocess::Preprocessor::from_vision_config(&config.vision);
    for (path, bytes) in inputs("image") {
        let err = checks::image(&pre, &bytes).err().unwrap_or_else(|| panic!("{} decodes", path.display()));
        assert!(err.contains("fuzz input") && err.contains("cannot decode"), "{}: {err}", path.display());
    }
}

#[test]
fn grammar_inputs_that_crashed_stay_completable() {
    for (_, data) in inputs("grammar") {
        checks::grammar(&data);
    }
    assert_eq!(checks::parts(b"a\x00\x01b\x00\x01c", 2), vec![&b"a"[..], &b"b\x00\x01c"[..]]);
}

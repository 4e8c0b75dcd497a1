//! Every input a fuzz target found a defect with (`fuzz/regressions/TARGET/NAME`), run through that
//! target's own check (fuzz/src/checks.rs, included here) in the ordinary test suite, so a fixed
//! defect stays fixed without libFuzzer. docs/RELIABILITY.md#fuzzing lists them.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// How many panics `f` raised on this thread, caught or not: libFuzzer's harness aborts on any panic,
/// even one a `catch_unwind` would have turned into an error, so a fixed input must not panic at all
/// (or `make fuzz-smoke`, which seeds its corpora with these inputs, fails at once).
fn panics_in<T>(f: impl FnOnce() -> T) -> (T, usize) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
    let before = PANICS.with(Cell::get);
    let out = f();
    (out, PANICS.with(Cell::get) - before)
}

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
        let (result, panics) = panics_in(|| checks::image(&pre, &bytes));
        assert_eq!(panics, 0, "{}: a decoder panicked (and was caught)", path.display());
        let err = result.err().unwrap_or_else(|| panic!("{} decodes", path.display()));
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

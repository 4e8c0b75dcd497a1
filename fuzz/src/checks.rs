//! The checks of the fuzz targets that found defects, as plain functions: the targets call them on
//! libFuzzer's inputs, and `tests/fuzz_regressions.rs` (which includes this file) on the inputs in
//! `fuzz/regressions/`, so a fixed defect stays fixed in the ordinary test suite. No libFuzzer here.

use st::decode::grammar::{Bounds, OutputSpec, SceneRules};
use st::preprocess::Preprocessor;

/// Separates the parts of a multi-part input (`a\x00\x01b` → `a`, `b`); a part may hold anything else.
pub const SEP: &[u8] = b"\x00\x01";

/// The first `n` parts of `data` (missing ones empty, the last holding the rest).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

/// A little-endian u16 at byte `i` of `b` (missing bytes 0).
pub fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b.get(i).copied().unwrap_or(0), b.get(i + 1).copied().unwrap_or(0)])
}

/// Target `image`: decode + preprocess never panics; a decoded image has patches.
pub fn image(pre: &Preprocessor, data: &[u8]) -> Result<(), String> {
    match pre.load_bytes(data, "fuzz input") {
        Ok(image) => {
            assert!(image.pixel_values.nrows() > 0, "a decoded image has patches");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Target `grammar`: `[settings, question, bytes]` — the rules for the settings' image size and
/// bounds, fed the bytes (refused ones skipped); the prefix accepted must have a completion within
/// the finishing reserve.
pub fn grammar(data: &[u8]) {
    let p = parts(data, 3);
    let s = p[0];
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let size = (1 + u32::from(u16_at(s, 0)), 1 + u32::from(u16_at(s, 2)));
    let bounds = Bounds {
        max_objects: u32::from(at(4) % 6),
        max_relationships: u32::from(at(5) % 6),
        max_label_bytes: 1 + at(6) % 32,
        max_id_digits: 1 + at(7) % 3,
        max_predicate_bytes: 1 + at(8) % 48,
        ..Bounds::default()
    };
    let question = String::from_utf8_lossy(p[1]);
    let rules = SceneRules::new(OutputSpec::new(size, &question, bounds));
    let mut state = rules.initial();
    for &b in p[2] {
        if let Some(next) = rules.step(&state, b) {
            state = next;
        }
    }
    let reserve = rules.finish_reserve() as usize;
    let completion = rules.completion(&state, reserve, 1 << 22);
    assert!(
        completion.is_some(),
        "an accepted prefix has no completion within {reserve} bytes; at {:?}",
        state.phase()
    );
}

//! One line of `st reward --input`: a score line or a line with an `error` field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    for sparse in [false, true] {
        let v = st::cli::reward::score_line(&line, sparse);
        assert!(v.get("overall").is_some() || v.get("error").is_some(), "{v}");
    }
});

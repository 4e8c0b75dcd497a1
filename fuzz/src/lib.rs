//! What the fuzz targets share: splitting one input into parts, the fixtures' paths, a scratch
//! directory per process.

use std::path::{Path, PathBuf};

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

/// A fixture of the project (`tests/fixtures/…`).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

/// An empty directory of this process under the temp dir, emptied on each call.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("st-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    dir
}

/// A little-endian u16 from the first two bytes of `b` (missing bytes 0).
pub fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b.get(i).copied().unwrap_or(0), b.get(i + 1).copied().unwrap_or(0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_on_the_separator() {
        assert_eq!(parts(b"a\x00\x01b\x00\x01c", 2), vec![&b"a"[..], &b"b\x00\x01c"[..]]);
        assert_eq!(parts(b"a", 3), vec![&b"a"[..], &b""[..], &b""[..]]);
    }
}

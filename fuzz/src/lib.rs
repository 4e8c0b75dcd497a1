//! What the fuzz targets share: splitting one input into parts and the checks of [`checks`], the
//! fixtures' paths, a scratch directory per process.

use std::path::{Path, PathBuf};

pub mod checks;
pub use checks::{SEP, parts, u16_at};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_on_the_separator() {
        assert_eq!(parts(b"a\x00\x01b\x00\x01c", 2), vec![&b"a"[..], &b"b\x00\x01c"[..]]);
        assert_eq!(parts(b"a", 3), vec![&b"a"[..], &b""[..], &b""[..]]);
    }
}

//! Where a request's image comes from: a `data:` URL or bare base64, an uploaded file, or a
//! `file://` path inside the one directory `--allow-local-files` names. Bytes are bounded here
//! (`--max-image-bytes`); pixels by the runtime's decode limits when the frame is encoded.

use crate::error::ApiError;
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An encoded image (PNG, JPEG, …) and the hash that keys the frame cache.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub bytes: Arc<Vec<u8>>,
    pub hash: blake3::Hash,
    /// Names the image in errors (`data URL`, the file's path, the upload's field).
    pub name: String,
}

impl ImageInput {
    pub fn new(bytes: Vec<u8>, name: impl Into<String>) -> Self {
        let hash = blake3::hash(&bytes);
        Self { bytes: Arc::new(bytes), hash, name: name.into() }
    }
}

/// The limits images are read under.
#[derive(Debug, Clone, Default)]
pub struct ImageSources {
    pub max_bytes: usize,
    /// Canonical directory `file://` URLs may point into (`None`: refused).
    pub local_dir: Option<PathBuf>,
}

impl ImageSources {
    /// The image an OpenAI `image_url.url` names.
    pub fn read_url(&self, url: &str) -> Result<ImageInput, ApiError> {
        let param = "messages";
        if let Some(rest) = url.strip_prefix("data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::invalid(param, "the image's data URL has no `,` before its data"))?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::invalid(
                    param,
                    "the image's data URL must be base64 (`data:image/png;base64,…`)",
                ));
            }
            return self.read_base64(data, "data URL", param);
        }
        if let Some(path) = url.strip_prefix("file://") {
            return self.read_local_file(Path::new(path));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Err(ApiError::invalid(
                param,
                "st serve does not fetch remote images; send the image as a data URL (data:image/jpeg;base64,…)",
            ));
        }
        Err(ApiError::invalid(param, "an image_url must be a data URL or, with --allow-local-files, a file:// URL"))
    }

    /// Base64 (standard alphabet, padding optional, whitespace ignored) or a whole data URL.
    pub fn read_base64(&self, data: &str, name: &str, param: &'static str) -> Result<ImageInput, ApiError> {
        if let Some(rest) = data.strip_prefix("data:") {
            let (_, d) = rest.split_once(',').ok_or_else(|| ApiError::invalid(param, "the data URL has no `,`"))?;
            return self.read_base64(d, name, param);
        }
        // 4 base64 characters carry 3 bytes: refuse before decoding what could not fit.
        let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if clean.len() / 4 * 3 > self.max_bytes + 3 {
            return Err(self.too_big(clean.len() / 4 * 3, param));
        }
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = engine
            .decode(clean)
            .map_err(|e| ApiError::invalid(param, format!("the image's base64 is invalid: {e}")))?;
        self.take_bytes(bytes, name, param)
    }

    /// Bytes already in hand (an upload).
    pub fn take_bytes(&self, bytes: Vec<u8>, name: &str, param: &'static str) -> Result<ImageInput, ApiError> {
        if bytes.len() > self.max_bytes {
            return Err(self.too_big(bytes.len(), param));
        }
        if bytes.is_empty() {
            return Err(ApiError::invalid(param, "the image is empty"));
        }
        Ok(ImageInput::new(bytes, name))
    }

    fn read_local_file(&self, path: &Path) -> Result<ImageInput, ApiError> {
        let param = "messages";
        let Some(dir) = &self.local_dir else {
            return Err(ApiError::invalid(
                param,
                "file:// images are refused unless the server runs with --allow-local-files DIR",
            ));
        };
        let outside =
            || ApiError::invalid(param, format!("{} is not inside the --allow-local-files directory", path.display()));
        // Canonical paths: `..` and symbolic links cannot lead outside the directory.
        let real = path.canonicalize().map_err(|_| outside())?;
        if !real.starts_with(dir) {
            return Err(outside());
        }
        let len =
            std::fs::metadata(&real).map_err(|e| ApiError::invalid(param, format!("{}: {e}", path.display())))?.len();
        if len > self.max_bytes as u64 {
            return Err(self.too_big(len as usize, param));
        }
        let bytes = std::fs::read(&real).map_err(|e| ApiError::invalid(param, format!("{}: {e}", path.display())))?;
        self.take_bytes(bytes, &path.display().to_string(), param)
    }

    fn too_big(&self, len: usize, param: &'static str) -> ApiError {
        ApiError::invalid(
            param,
            format!("the image is {len} bytes, above the limit of {} (--max-image-bytes)", self.max_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: Option<PathBuf>) -> ImageSources {
        ImageSources { max_bytes: 1000, local_dir: dir }
    }

    #[test]
    fn data_urls_decode_and_hash_the_bytes() {
        let a = sources(None).read_url("data:image/png;base64,AAEC").unwrap();
        assert_eq!(*a.bytes, vec![0, 1, 2]);
        let b = sources(None).read_base64("AA EC\n", "x", "image").unwrap();
        assert_eq!(a.hash, b.hash);
        assert!(sources(None).read_url("data:image/png,AAEC").is_err());
        assert!(sources(None).read_url("data:image/png;base64,@@@").is_err());
        assert!(sources(None).read_url("https://example.com/a.png").is_err());
    }

    #[test]
    fn images_above_the_limit_are_refused_before_decoding() {
        let big = "A".repeat(4000);
        let e = sources(None).read_base64(&big, "x", "image").unwrap_err();
        assert!(e.to_string().contains("--max-image-bytes"), "{e}");
    }

    #[test]
    fn local_files_only_inside_the_allowed_directory() {
        let root = std::env::temp_dir().join(format!("st-serve-images-{}", std::process::id()));
        let inside = root.join("ok");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("a.png"), b"png").unwrap();
        std::fs::write(root.join("secret.png"), b"no").unwrap();
        let s = sources(Some(inside.canonicalize().unwrap()));
        assert_eq!(*s.read_url(&format!("file://{}", inside.join("a.png").display())).unwrap().bytes, b"png");
        let escape = format!("file://{}/../secret.png", inside.display());
        assert!(s.read_url(&escape).unwrap_err().to_string().contains("not inside"));
        assert!(sources(None).read_url(&format!("file://{}", inside.join("a.png").display())).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }
}

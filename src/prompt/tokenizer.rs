//! The checkpoint's `tokenizer.json` (HF tokenizers) and the special ids the runtime needs,
//! looked up by their text, never hard-coded.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Ids of the tokens the prompt and the decode loop use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub im_start: u32,
    pub im_end: u32,
    pub endoftext: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub image_pad: u32,
}

/// A loaded tokenizer; cheap to clone.
#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: Arc<tokenizers::Tokenizer>,
    pub path: PathBuf,
    pub special: SpecialTokens,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).field("special", &self.special).finish()
    }
}

impl TextTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Checkpoint(st_checkpoint::Error::MissingFile { path: path.to_path_buf() }));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), reason: e.to_string() })?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| Error::MissingSpecialToken { path: path.to_path_buf(), token: token.to_string() })
        };
        let special = SpecialTokens {
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            endoftext: id("<|endoftext|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            image_pad: id("<|image_pad|>")?,
        };
        Ok(Self { inner: Arc::new(inner), path: path.to_path_buf(), special })
    }

    /// Encode as the HF tokenizer's `__call__` does (special tokens recognised in the text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })
    }

    /// Entries of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

//! The SpatialThinker prompt (docs/FORMATS.md#the-prompt): the instruction text, rendered through the checkpoint's
//! own chat template, tokenized with its `tokenizer.json`, with each `<|image_pad|>` expanded
//! to the image's number of merged tokens.

mod template;
mod tokenizer;

pub use template::{ChatTemplate, Content, Message};
pub use tokenizer::{SpecialTokens, TextTokenizer};

use crate::error::{Error, Result};
use std::path::Path;

/// SpatialThinker's inference instruction (model card). `{W}`/`{H}` are the original image size.
pub const INSTRUCTION: &str = "You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue within <think> </think> tags and then provide the final answer. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> (A) cat </answer>.";

/// Longest question accepted, in bytes (the context limit is enforced later in tokens).
pub const MAX_QUESTION_BYTES: usize = 16 * 1024;

/// The user text that follows the image: instruction, image size, blank line, question.
pub fn spatialthinker_text(width: u32, height: u32, question: &str) -> Result<String> {
    let q = question.trim();
    if q.is_empty() {
        return Err(Error::InvalidArgument { name: "question", reason: "is empty".into() });
    }
    if q.len() > MAX_QUESTION_BYTES {
        return Err(Error::InvalidArgument {
            name: "question",
            reason: format!("is {} bytes, above the limit of {MAX_QUESTION_BYTES}", q.len()),
        });
    }
    Ok(user_text(width, height, question))
}

fn user_text(width: u32, height: u32, question: &str) -> String {
    format!("{INSTRUCTION}\n\nImage size: {width} x {height}\n\n{question}")
}

/// Renders and tokenizes prompts for one checkpoint.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    pub template: ChatTemplate,
    pub tokenizer: TextTokenizer,
}

impl PromptBuilder {
    /// Load the chat template and tokenizer of the checkpoint in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(Self { template: ChatTemplate::from_dir(dir)?, tokenizer: TextTokenizer::from_dir(dir)? })
    }

    /// The full SpatialThinker conversation for one image, as text.
    pub fn spatialthinker_prompt(&self, width: u32, height: u32, question: &str) -> Result<String> {
        let text = spatialthinker_text(width, height, question)?;
        let messages = [Message::user(vec![Content::Image, Content::Text(text)])];
        self.template.render(&messages, true)
    }

    /// The question-independent start of every prompt about one image: the tokens up to the end
    /// of the user's text before the question (rendered with an empty question and cut at the
    /// user turn's end). Callers reuse it only as far as it matches a real prompt token for token.
    pub fn frame_prefix(&self, width: u32, height: u32, image_tokens: usize) -> Result<Vec<u32>> {
        let messages = [Message::user(vec![Content::Image, Content::Text(user_text(width, height, ""))])];
        let mut ids = self.encode(&self.template.render(&messages, false)?, &[image_tokens])?;
        let special = self.tokenizer.special;
        let image_end = ids.iter().rposition(|&t| t == special.image_pad).unwrap_or(0);
        if let Some(end) = ids[image_end..].iter().position(|&t| t == special.im_end) {
            ids.truncate(image_end + end);
        }
        Ok(ids)
    }

    /// Token ids of `text` with the i-th `<|image_pad|>` repeated `image_tokens[i]` times.
    pub fn encode(&self, text: &str, image_tokens: &[usize]) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text)?;
        let pad = self.tokenizer.special.image_pad;
        let found = ids.iter().filter(|&&t| t == pad).count();
        if found != image_tokens.len() {
            return Err(Error::Prompt {
                reason: format!(
                    "the prompt has {found} image placeholders but {} images were given",
                    image_tokens.len()
                ),
            });
        }
        let total: usize = ids.len() + image_tokens.iter().sum::<usize>() - found;
        let mut out = Vec::with_capacity(total);
        let mut counts = image_tokens.iter();
        for id in ids {
            if id == pad {
                let n = counts.next().copied().unwrap_or(0);
                out.extend(std::iter::repeat_n(pad, n));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }
}

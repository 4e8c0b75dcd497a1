//! What one constrained generation must satisfy: the image size the boxes live in, the options
//! the answer must be one of, and the bounds that make generation terminate.

use crate::scene::OptionSet;
use serde::{Deserialize, Serialize};

/// Bounds on the sections a model writes freely. Counted in tokens for free text (so generation
/// always ends), in bytes or items for the scene's pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    pub observe_tokens: u32,
    pub think_tokens: u32,
    /// Free-text answers (questions without options).
    pub answer_tokens: u32,
    pub max_objects: u32,
    pub max_relationships: u32,
    /// Bytes of an id's label (`cup` in `cup.1`).
    pub max_label_bytes: u8,
    /// Digits of an id's number.
    pub max_id_digits: u8,
    pub max_predicate_bytes: u8,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            observe_tokens: 512,
            think_tokens: 1024,
            answer_tokens: 64,
            max_objects: 32,
            max_relationships: 32,
            max_label_bytes: 32,
            max_id_digits: 3,
            max_predicate_bytes: 48,
        }
    }
}

/// The constraint of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Original image size (width, height): boxes are inside it.
    pub image_size: (u32, u32),
    /// The answers allowed (`(A) text`, …); empty: free text.
    pub options: OptionSet,
    pub bounds: Bounds,
    /// The generation's token limit: when the tokens left come down to what closing the output
    /// can take, the rules allow only the shortest way to a complete answer.
    pub max_tokens: Option<u32>,
}

impl OutputSpec {
    /// The spec for a generation of at most `max_new_tokens`: free text may use at most a quarter
    /// of the budget each (an eighth for a free answer), leaving the rest for the scene, so
    /// constrained outputs finish in time.
    pub fn budgeted(image_size: (u32, u32), question: &str, bounds: &Bounds, max_new_tokens: usize) -> Self {
        let mut bounds = bounds.clone();
        let quarter = (max_new_tokens / 4).max(1) as u32;
        bounds.observe_tokens = bounds.observe_tokens.min(quarter);
        bounds.think_tokens = bounds.think_tokens.min(quarter);
        bounds.answer_tokens = bounds.answer_tokens.min((quarter / 2).max(1));
        let max = u32::try_from(max_new_tokens).unwrap_or(u32::MAX);
        Self::new(image_size, question, bounds).with_max_tokens(max)
    }

    pub fn new(image_size: (u32, u32), question: &str, bounds: Bounds) -> Self {
        Self { image_size, options: OptionSet::from_question(question), bounds, max_tokens: None }
    }

    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

//! Datasets: rows in the STVQA format (`images`, `problem`, `answer_option_text`, `category`,
//! optional ground-truth scene) and a synthetic generator of them ([`synth`]).

pub mod completion;
pub mod eval;
pub mod synth;

use serde::{Deserialize, Serialize};

/// One evaluation row (STVQA-7K's fields that `st` reads, plus what the generator adds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Image paths, relative to the data file's folder; the first is used.
    #[serde(default)]
    pub images: Vec<String>,
    /// The question with its options (`… (A) left (B) right`).
    #[serde(default)]
    pub problem: Option<String>,
    /// Or the question and its options separately.
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    /// The correct option, e.g. `(A) left`.
    pub answer_option_text: String,
    #[serde(default)]
    pub category: String,
    /// `<scene>{json}</scene><answer>(A) left</answer>` when the row has a ground-truth scene.
    #[serde(default)]
    pub ground_truth: Option<String>,
    /// A full docs/FORMATS.md#the-response response to train on (`st finetune --sft`); built from `ground_truth` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
}

impl Row {
    /// The question as the model sees it (options included).
    pub fn full_question(&self) -> Option<String> {
        match (&self.problem, &self.question) {
            (Some(p), _) if !p.trim().is_empty() => Some(p.clone()),
            (_, Some(q)) if !q.trim().is_empty() => {
                Some(format!("{} {}", q.trim(), self.options.join(" ")).trim().to_string())
            }
            _ => None,
        }
    }
}

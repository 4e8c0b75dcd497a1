//! Scoring a model on dataset rows: one [`Record`] per row (the chosen option, whether it is
//! right, validity, reward against the row's ground truth, timings) and a [`Summary`] over them.

use super::Row;
use crate::engine::{Answer, Engine, GenerateOptions};
use crate::reward::{ExactLabels, Reward, Weights, reward};
use crate::scene::parse_choice;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The outcome of one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub index: usize,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub expected: String,
    #[serde(default)]
    pub predicted: Option<String>,
    #[serde(default)]
    pub correct: bool,
    #[serde(default)]
    pub valid: bool,
    #[serde(default)]
    pub reward: Option<Reward>,
    #[serde(default)]
    pub ttft_ms: f64,
    #[serde(default)]
    pub decode_tokens_per_s: f64,
    #[serde(default)]
    pub new_tokens: usize,
    /// Why the row was skipped (bad JSON, missing image, …).
    #[serde(default)]
    pub error: Option<String>,
}

impl Record {
    pub fn failed(index: usize, error: String) -> Self {
        Record {
            index,
            category: String::new(),
            expected: String::new(),
            predicted: None,
            correct: false,
            valid: false,
            reward: None,
            ttft_ms: 0.0,
            decode_tokens_per_s: 0.0,
            new_tokens: 0,
            error: Some(error),
        }
    }
}

/// Whether the answer names the expected option: the same letter when both have one, else the
/// same text (trimmed, case-insensitive).
pub fn is_correct(answer: &Answer, expected: &str) -> bool {
    let want = parse_choice(expected);
    match &answer.response.answer {
        Some(got) => match (got.letter, want.letter) {
            (Some(a), Some(b)) => a == b,
            _ => got.text.trim().eq_ignore_ascii_case(want.text.trim()),
        },
        None => false,
    }
}

/// Run one row: its image (relative to `base`), its question, scored.
pub fn run_row(engine: &mut Engine, base: &Path, index: usize, row: &Row, opts: &GenerateOptions) -> Record {
    let Some(image) = row.images.first() else { return Record::failed(index, "the row names no image".into()) };
    let Some(question) = row.full_question() else {
        return Record::failed(index, "the row has no `problem` or `question`".into());
    };
    let answer = match engine.encode_image(&base.join(image)).and_then(|f| {
        let a = engine.ask(&f, &question, opts)?;
        Ok((a, f.image.original_size))
    }) {
        Ok(a) => a,
        Err(e) => return Record::failed(index, e.to_string()),
    };
    let (a, (w, h)) = answer;
    let t = &a.timings;
    let reward = row
        .ground_truth
        .as_deref()
        .map(|gt| reward(&a.raw, gt, (f64::from(w), f64::from(h)), &Weights::default(), &ExactLabels));
    Record {
        index,
        category: row.category.clone(),
        expected: row.answer_option_text.clone(),
        predicted: a.response.answer.as_ref().map(|c| match c.letter {
            Some(l) => format!("({l}) {}", c.text),
            None => c.text.clone(),
        }),
        correct: is_correct(&a, &row.answer_option_text),
        valid: a.response.valid,
        reward,
        ttft_ms: t.preprocess_ms + t.vision_ms + t.prefix_prefill_ms + t.prefill_ms,
        decode_tokens_per_s: t.decode_tokens_per_s(),
        new_tokens: a.token_ids.len(),
        error: None,
    }
}

/// Accuracy of one category.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryScore {
    pub rows: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// Everything over the scored rows (rows with errors are counted apart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub rows: usize,
    pub errors: usize,
    pub accuracy: f64,
    pub categories: BTreeMap<String, CategoryScore>,
    pub valid_rate: f64,
    /// Mean of each reward component over the rows with a ground-truth scene.
    pub reward: Option<Reward>,
    pub mean_ttft_ms: f64,
    pub mean_decode_tokens_per_s: f64,
}

pub fn summarize(records: &[Record]) -> Summary {
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let n = ok.len().max(1) as f64;
    let mut categories: BTreeMap<String, CategoryScore> = BTreeMap::new();
    for r in &ok {
        let c = categories.entry(r.category.clone()).or_default();
        c.rows += 1;
        c.correct += usize::from(r.correct);
    }
    for c in categories.values_mut() {
        c.accuracy = c.correct as f64 / c.rows as f64;
    }
    let rewards: Vec<&Reward> = ok.iter().filter_map(|r| r.reward.as_ref()).collect();
    let reward = (!rewards.is_empty()).then(|| {
        let m = |f: fn(&Reward) -> f64| rewards.iter().map(|r| f(r)).sum::<f64>() / rewards.len() as f64;
        Reward {
            overall: m(|r| r.overall),
            format: m(|r| r.format),
            count: m(|r| r.count),
            accuracy: m(|r| r.accuracy),
            spatial: m(|r| r.spatial),
        }
    });
    Summary {
        rows: ok.len(),
        errors: records.len() - ok.len(),
        accuracy: ok.iter().filter(|r| r.correct).count() as f64 / n,
        categories,
        valid_rate: ok.iter().filter(|r| r.valid).count() as f64 / n,
        reward,
        mean_ttft_ms: ok.iter().map(|r| r.ttft_ms).sum::<f64>() / n,
        mean_decode_tokens_per_s: ok.iter().map(|r| r.decode_tokens_per_s).sum::<f64>() / n,
    }
}

//! SpatialThinker's dense spatial reward (docs/FORMATS.md#the-dense-reward), exactly: format F, count C, accuracy A,
//! spatial S (CIoU with a Hungarian assignment), lexicographic gating, configurable weights,
//! each component returned; the sparse variant (R = A) for ablations. Label similarity is a
//! trait; the default is exact match of normalised labels (the original's spaCy vectors are not
//! obtainable here).

mod ciou;
mod score;

pub use ciou::ciou;
pub use score::{Scored, score};

use crate::scene::{SceneGraph, TAGS};
use serde::{Deserialize, Serialize};

/// Similarity of two normalised labels in [0, 1].
pub trait LabelSimilarity {
    fn similarity(&self, a: &str, b: &str) -> f64;
}

/// 1 when the normalised labels are equal, else 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactLabels;

impl LabelSimilarity for ExactLabels {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        if a == b { 1.0 } else { 0.0 }
    }
}

/// Weights of R = w_f·F + w_c·C + w_a·A + w_s·S.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub format: f64,
    pub count: f64,
    pub accuracy: f64,
    pub spatial: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { format: 0.1, count: 0.2, accuracy: 0.5, spatial: 0.2 }
    }
}

/// Every component and the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub overall: f64,
    pub format: f64,
    pub count: f64,
    pub accuracy: f64,
    pub spatial: f64,
}

/// The text between the first `<tag>` and the next `</tag>`.
fn first_section<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(&text[start..end])
}

/// Format F: each tag pair exactly once (order not checked) and a `<scene>` that follows the
/// syntactic rules. Returns the scene when F = 1.
pub fn format_check(completion: &str) -> Option<SceneGraph> {
    for tag in TAGS {
        if completion.matches(&format!("<{tag}>")).count() != 1 || completion.matches(&format!("</{tag}>")).count() != 1
        {
            return None;
        }
    }
    let mut reasons = Vec::new();
    let scene = SceneGraph::parse(first_section(completion, "scene")?, &mut reasons)?;
    reasons.is_empty().then_some(scene)
}

/// `Image size: (W x H)` (training prompts) or `Image size: W x H` (the model card's).
pub fn image_size_from_prompt(prompt: &str) -> Option<(f64, f64)> {
    let rest = &prompt[prompt.find("Image size:")? + "Image size:".len()..];
    let rest = rest.trim_start().trim_start_matches('(');
    let (w, rest) = rest.split_once('x')?;
    let h: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    Some((w.trim().parse().ok()?, h.parse().ok()?))
}

/// `_` and `-` → space, stripped, lowercased; the label is the part before the first `.`.
pub fn normalised_label(id: &str) -> String {
    let label = id.split('.').next().unwrap_or_default();
    label.replace(['_', '-'], " ").trim().to_lowercase()
}

fn count_term(pred: &SceneGraph, gt: &SceneGraph) -> f64 {
    let term = |np: usize, ng: usize| (1.0 - (np as f64 - ng as f64).abs() / ng.max(1) as f64).max(0.0);
    let obj = term(pred.objects.len(), gt.objects.len());
    if gt.relationships.is_empty() {
        obj
    } else {
        0.7 * obj + 0.3 * term(pred.relationships.len(), gt.relationships.len())
    }
}

fn spatial_term(pred: &SceneGraph, gt: &SceneGraph, (w, h): (f64, f64), sim: &dyn LabelSimilarity) -> f64 {
    if gt.objects.is_empty() {
        return match (gt.relationships.is_empty(), pred.objects.is_empty()) {
            (true, true) | (false, _) => 1.0,
            (true, false) => 0.0,
        };
    }
    let norm = |b: [f64; 4]| [b[0] / w, b[1] / h, b[2] / w, b[3] / h];
    let (np, ng) = (pred.objects.len(), gt.objects.len());
    let rows = np.max(ng);
    let mut cost = vec![1e5; rows * ng];
    let mut score = vec![0.0; rows * ng];
    for (i, p) in pred.objects.iter().enumerate() {
        for (j, g) in gt.objects.iter().enumerate() {
            let c = (ciou(norm(p.bbox), norm(g.bbox)) + 1.0) / 2.0;
            let s = sim.similarity(&normalised_label(&p.id), &normalised_label(&g.id));
            cost[i * ng + j] = 2.0 * (1.0 - s) + (1.0 - c);
            score[i * ng + j] = c;
        }
    }
    let Ok((r, c)) = lsap::solve(rows, ng, &cost, false) else { return 0.0 };
    let total: f64 = r.iter().zip(&c).filter(|(i, _)| **i < np).map(|(i, j)| score[i * ng + j]).sum();
    total / ng as f64
}

/// The dense reward of `completion` against `ground_truth` for an image of `image_size` (W, H).
pub fn reward(
    completion: &str,
    ground_truth: &str,
    image_size: (f64, f64),
    weights: &Weights,
    sim: &dyn LabelSimilarity,
) -> Reward {
    let Some(pred) = format_check(completion) else { return Reward::default() };
    let mut gt_reasons = Vec::new();
    let gt =
        first_section(ground_truth, "scene").and_then(|b| SceneGraph::parse(b, &mut gt_reasons)).unwrap_or_default();
    let accuracy = sparse_reward(completion, ground_truth);
    let count = count_term(&pred, &gt);
    let spatial = if accuracy == 1.0 { spatial_term(&pred, &gt, image_size, sim) } else { 0.0 };
    let overall = weights.format + weights.count * count + weights.accuracy * accuracy + weights.spatial * spatial;
    Reward { overall, format: 1.0, count, accuracy, spatial }
}

/// Accuracy A, which is also the sparse variant for ablations (R = A, no format gating, as
/// docs/FORMATS.md#the-dense-reward states it): the first `<answer>` bodies, stripped and lowercased, equal.
pub fn sparse_reward(completion: &str, ground_truth: &str) -> f64 {
    let answer = |t: &str| first_section(t, "answer").map(|a| a.trim().to_lowercase());
    match (answer(completion), answer(ground_truth)) {
        (Some(a), Some(b)) if a == b => 1.0,
        _ => 0.0,
    }
}

//! Tolerant parsing of a whole response: `<observe>…</observe><scene>…</scene><think>…</think>
//! <answer>…</answer>`.

use super::graph::SceneGraph;
use super::options::{Choice, OptionSet, parse_choice};
use serde::{Deserialize, Serialize};

/// The four sections, in the order docs/FORMATS.md#the-response writes them.
pub const TAGS: [&str; 4] = ["observe", "scene", "think", "answer"];

/// What the response is checked against: the image size stated in the prompt and the options
/// the question offered (empty: free-text answer).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub image_size: Option<(u32, u32)>,
    pub options: OptionSet,
}

impl Rules {
    pub fn new(image_size: (u32, u32), question: &str) -> Self {
        Self { image_size: Some(image_size), options: OptionSet::from_question(question) }
    }
}

/// A parsed response. Fields are `None` where the section is missing or unreadable; `valid`
/// is true when every rule of docs/FORMATS.md#the-response holds, else `reasons` lists what failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub observe: Option<String>,
    pub scene: Option<SceneGraph>,
    pub think: Option<String>,
    pub answer: Option<Choice>,
    pub valid: bool,
    pub reasons: Vec<String>,
}

/// The text between the first `<tag>` and the next `</tag>`, with how often each occurs.
fn section<'a>(raw: &'a str, tag: &str, reasons: &mut Vec<String>) -> Option<(usize, &'a str)> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let (opens, closes) = (raw.matches(&open).count(), raw.matches(&close).count());
    if opens != 1 || closes != 1 {
        reasons.push(format!("{open}…{close} occurs {opens}/{closes} times, expected once"));
    }
    let start = raw.find(&open)? + open.len();
    let end = raw[start..].find(&close)? + start;
    Some((start, &raw[start..end]))
}

/// Parse `raw` (the generated text) and check it against `rules`.
pub fn parse_response(raw: &str, rules: &Rules) -> Response {
    let mut reasons = Vec::new();
    let mut starts = Vec::new();
    let mut bodies: [Option<&str>; 4] = [None; 4];
    for (k, tag) in TAGS.iter().enumerate() {
        if let Some((at, body)) = section(raw, tag, &mut reasons) {
            starts.push(at);
            bodies[k] = Some(body);
        }
    }
    if starts.len() == TAGS.len() && !starts.is_sorted() {
        reasons.push("the sections are not in the order observe, scene, think, answer".into());
    }
    let scene = bodies[1].and_then(|b| SceneGraph::parse(b, &mut reasons));
    if let (Some(g), Some((w, h))) = (&scene, rules.image_size) {
        g.check_semantics(w, h, &mut reasons);
    }
    let answer = bodies[3].map(parse_choice);
    if let Some(a) = &answer
        && !rules.options.is_empty()
        && let Err(e) = rules.options.check(a)
    {
        reasons.push(e);
    }
    if answer.as_ref().is_some_and(|a| a.letter.is_none() && a.text.is_empty()) {
        reasons.push("<answer> is empty".into());
    }
    let text = |b: Option<&str>| b.map(|s| s.trim().to_string());
    Response { observe: text(bodies[0]), scene, think: text(bodies[2]), answer, valid: reasons.is_empty(), reasons }
}

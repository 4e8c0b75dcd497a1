//! The docs/FORMATS.md#the-response completion a training row teaches: its own `completion` when it has one, else one
//! built from its ground-truth scene and answer — observe (the objects the scene lists), the
//! scene graph as given, a short think that states the answer, and the answer.

use super::Row;

/// Text between the first `<tag>` and its `</tag>` in `s`.
fn section<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = s.find(&open)? + open.len();
    let end = start + s[start..].find(&close)?;
    Some(s[start..end].trim())
}

/// The completion for `row`, or why there is none.
pub fn completion(row: &Row) -> Result<String, String> {
    if let Some(c) = row.completion.as_deref().filter(|c| !c.trim().is_empty()) {
        return Ok(c.to_string());
    }
    let gt = row.ground_truth.as_deref().ok_or("the row has neither `completion` nor `ground_truth`")?;
    let scene = section(gt, "scene").ok_or("`ground_truth` has no <scene>…</scene>")?;
    let answer = section(gt, "answer").map(str::to_string).unwrap_or_else(|| row.answer_option_text.trim().to_string());
    if answer.is_empty() {
        return Err("the row has no answer (`answer_option_text` or <answer> in `ground_truth`)".into());
    }
    let parsed: serde_json::Value =
        serde_json::from_str(scene).map_err(|e| format!("`ground_truth` scene is not JSON: {e}"))?;
    let labels: Vec<String> = parsed["objects"]
        .as_array()
        .map(|objs| {
            objs.iter()
                .filter_map(|o| o["id"].as_str())
                .map(|id| id.split('.').next().unwrap_or(id).replace('_', " "))
                .collect()
        })
        .unwrap_or_default();
    let observe = match labels.len() {
        0 => "I see no object relevant to the question.".to_string(),
        1 => format!("I see one relevant object: {}.", labels[0]),
        n => format!("I see {n} relevant objects: {}.", labels.join(", ")),
    };
    let question = row.full_question().unwrap_or_default();
    let q = question.split(" (A)").next().unwrap_or(&question).trim();
    let think = format!("The question asks: {q} The scene graph gives the answer {answer}.");
    Ok(format!(
        "<observe> {observe} </observe>\n<scene>\n{scene}\n</scene>\n<think> {think} </think>\n<answer> {answer} </answer>"
    ))
}

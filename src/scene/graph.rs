//! Scene graph types and the rules of docs/FORMATS.md#the-response that concern it alone.

use serde::{Deserialize, Serialize};

/// `[x1, y1, x2, y2]` in pixels of the original image.
pub type BBox = [f64; 4];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// `label.N`, e.g. `cup.1`.
    pub id: String,
    /// The part of `id` before the first `.`.
    pub label: String,
    #[serde(serialize_with = "integral_as_int")]
    pub bbox: BBox,
}

/// Whole-number coordinates are written as JSON integers (`[0, 272, 310, 551]`).
fn integral_as_int<S: serde::Serializer>(b: &BBox, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeTuple;
    let mut t = s.serialize_tuple(4)?;
    for v in b {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            t.serialize_element(&(*v as i64))?;
        } else {
            t.serialize_element(v)?;
        }
    }
    t.end()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relationship {
    pub subject: String,
    pub predicate: String,
    pub object: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SceneGraph {
    pub objects: Vec<SceneObject>,
    pub relationships: Vec<Relationship>,
}

/// `^[a-zA-Z_]+\.\d+$` (docs/FORMATS.md#the-response), ASCII only as in Python's `re` with these classes.
pub fn is_valid_id(id: &str) -> bool {
    let Some((label, number)) = id.split_once('.') else { return false };
    !label.is_empty()
        && label.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

impl SceneObject {
    pub fn new(id: impl Into<String>, bbox: BBox) -> Self {
        let id = id.into();
        let label = id.split('.').next().unwrap_or_default().to_string();
        Self { id, label, bbox }
    }
}

impl SceneGraph {
    /// Parse the body of `<scene>` by the syntactic rules of docs/FORMATS.md#the-response, collecting every violation in
    /// `reasons`. Returns the graph when its structure could be read (objects with a 4-number
    /// bbox, relationships with three strings), even if some rules failed.
    pub fn parse(body: &str, reasons: &mut Vec<String>) -> Option<SceneGraph> {
        let value: serde_json::Value = match serde_json::from_str(body.trim()) {
            Ok(v) => v,
            Err(e) => {
                reasons.push(format!("<scene> is not JSON: {e}"));
                return None;
            }
        };
        let Some(map) = value.as_object() else {
            reasons.push("<scene> is not a JSON object".into());
            return None;
        };
        let list = |key: &str, reasons: &mut Vec<String>| -> Option<Vec<serde_json::Value>> {
            match map.get(key) {
                None => Some(Vec::new()),
                Some(serde_json::Value::Array(a)) => Some(a.clone()),
                Some(_) => {
                    reasons.push(format!("<scene> `{key}` is not a list"));
                    None
                }
            }
        };
        let (objects, relationships) = (list("objects", reasons)?, list("relationships", reasons)?);
        let mut graph = SceneGraph::default();
        for (i, o) in objects.iter().enumerate() {
            let Some(o) = o.as_object() else {
                reasons.push(format!("object {i} is not a JSON object"));
                return None;
            };
            if o.len() != 2 || !o.contains_key("id") || !o.contains_key("bbox") {
                let keys: Vec<&str> = o.keys().map(String::as_str).collect();
                reasons.push(format!("object {i} must have exactly `id` and `bbox`, has {keys:?}"));
            }
            let id = match o.get("id").and_then(|v| v.as_str()) {
                Some(id) => id,
                None => {
                    reasons.push(format!("object {i}: `id` is not a string"));
                    return None;
                }
            };
            if !is_valid_id(id) {
                reasons.push(format!("object {i}: id {id:?} does not match label.N"));
            }
            let bbox = o.get("bbox").and_then(|b| b.as_array()).and_then(|b| {
                let nums: Vec<f64> = b.iter().filter_map(|x| x.as_f64()).collect();
                (b.len() == 4 && nums.len() == 4).then(|| [nums[0], nums[1], nums[2], nums[3]])
            });
            let Some(bbox) = bbox else {
                reasons.push(format!("object {id}: `bbox` is not a list of 4 numbers"));
                return None;
            };
            graph.objects.push(SceneObject::new(id, bbox));
        }
        let mut seen = std::collections::HashSet::new();
        for o in &graph.objects {
            if !seen.insert(o.id.as_str()) {
                reasons.push(format!("id {:?} is declared twice", o.id));
            }
        }
        for (i, r) in relationships.iter().enumerate() {
            let field = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let (Some(subject), Some(predicate), Some(object)) =
                (field("subject"), field("predicate"), field("object"))
            else {
                reasons.push(format!("relationship {i} needs string `subject`, `predicate` and `object`"));
                return None;
            };
            for end in [&subject, &object] {
                if !is_valid_id(end) {
                    reasons.push(format!("relationship {i}: {end:?} does not match label.N"));
                }
            }
            graph.relationships.push(Relationship { subject, predicate, object });
        }
        Some(graph)
    }

    /// The semantic rules (docs/FORMATS.md#the-response) for an image of `width` × `height`: integer boxes with
    /// 0 ≤ x1 < x2 ≤ W and 0 ≤ y1 < y2 ≤ H; relationship ends declared among the objects.
    pub fn check_semantics(&self, width: u32, height: u32, reasons: &mut Vec<String>) {
        let (w, h) = (f64::from(width), f64::from(height));
        for o in &self.objects {
            let [x1, y1, x2, y2] = o.bbox;
            if o.bbox.iter().any(|v| v.fract() != 0.0) {
                reasons.push(format!("{}: bbox {:?} is not integers", o.id, o.bbox));
            }
            if !(0.0 <= x1 && x1 < x2 && x2 <= w && 0.0 <= y1 && y1 < y2 && y2 <= h) {
                reasons
                    .push(format!("{}: bbox {:?} is not inside {width}x{height} with x1 < x2, y1 < y2", o.id, o.bbox));
            }
        }
        let ids: std::collections::HashSet<&str> = self.objects.iter().map(|o| o.id.as_str()).collect();
        for r in &self.relationships {
            for end in [&r.subject, &r.object] {
                if !ids.contains(end.as_str()) {
                    reasons.push(format!(
                        "relationship {} {} {}: {end:?} is not a declared object",
                        r.subject, r.predicate, r.object
                    ));
                }
            }
        }
    }
}

//! `POST /v1/scene`: an image (base64 in JSON, or a multipart upload), a question and its options
//! → the typed answer, the same object `st-run --json` prints.

use crate::error::ApiError;
use crate::images::{ImageInput, ImageSources};
use crate::openai::{bounds, sampling};
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use st::engine::GenerateOptions;

/// The JSON form (multipart takes the same names as form fields, `image` as a file, `options`
/// repeated).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneRequest {
    /// Base64 of the encoded image, or a data URL.
    #[serde(default)]
    pub image: String,
    pub question: String,
    /// Answer options, appended to the question as `(A) … (B) …`.
    #[serde(default)]
    pub options: Vec<String>,
    pub model: Option<String>,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub grammar: Option<bool>,
    pub observe_tokens: Option<u32>,
    pub think_tokens: Option<u32>,
    pub speculate: Option<usize>,
}

/// At most this many options (letters A–Z).
pub const MAX_OPTIONS: usize = 26;

/// The question as the model reads it: `question (A) first (B) second …`.
pub fn question_with_options(question: &str, options: &[String]) -> Result<String, ApiError> {
    if options.len() > MAX_OPTIONS {
        return Err(ApiError::invalid(
            "options",
            format!("{} options, above the limit of {MAX_OPTIONS}", options.len()),
        ));
    }
    let mut q = question.trim().to_string();
    for (letter, o) in ('A'..='Z').zip(options) {
        let o = o.trim();
        if o.is_empty() {
            return Err(ApiError::invalid("options", format!("option ({letter}) is empty")));
        }
        q.push_str(&format!(" ({letter}) {o}"));
    }
    Ok(q)
}

/// The fields of a `/v1/scene` request, JSON or multipart, and the uploaded image if it came as a
/// multipart file; bodies above `max_body_bytes` are refused (the router's body limit).
pub async fn read_request(
    req: Request,
    sources: &ImageSources,
    max_body_bytes: usize,
) -> Result<(SceneRequest, Option<ImageInput>), ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_big = |status: StatusCode, text: String| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit: max_body_bytes }
        } else {
            ApiError::Malformed(text)
        }
    };
    if !is_multipart {
        let body = Bytes::from_request(req, &()).await.map_err(|e| too_big(e.status(), e.body_text()))?;
        let r: SceneRequest = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
        return Ok((r, None));
    }
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let mut fields = SceneRequest::default();
    let mut upload = None;
    while let Some(field) = form.next_field().await.map_err(|e| too_big(e.status(), e.body_text()))? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" && field.file_name().is_some() {
            let file = field.file_name().unwrap_or("upload").to_string();
            let bytes = field.bytes().await.map_err(|e| too_big(e.status(), e.body_text()))?;
            upload = Some(sources.take_bytes(bytes.to_vec(), &file, "image")?);
        } else {
            let text = field.text().await.map_err(|e| too_big(e.status(), e.body_text()))?;
            fields.set_field(&name, text)?;
        }
    }
    Ok((fields, upload))
}

impl SceneRequest {
    /// The image (`uploaded` when it came as a multipart file), the question and the options.
    pub fn parts(
        self,
        uploaded: Option<ImageInput>,
        sources: &ImageSources,
    ) -> Result<(ImageInput, String, GenerateOptions), ApiError> {
        let image = match uploaded {
            Some(i) => i,
            None if self.image.is_empty() => return Err(ApiError::invalid("image", "is missing")),
            None => sources.read_base64(&self.image, "image", "image")?,
        };
        let question = question_with_options(&self.question, &self.options)?;
        let opts = GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: sampling(self.temperature, self.top_p, self.seed)?,
            grammar: self.grammar.unwrap_or(true),
            bounds: bounds(self.observe_tokens, self.think_tokens),
            speculate: self.speculate.unwrap_or(0),
            ..GenerateOptions::default()
        };
        Ok((image, question, opts))
    }

    /// Set a multipart text field.
    pub fn set_field(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        fn num<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<Option<T>, ApiError> {
            v.trim().parse().map(Some).map_err(|_| ApiError::invalid(name, format!("`{v}` is not a number")))
        }
        match name {
            "image" => self.image = value,
            "question" => self.question = value,
            "options" => self.options.push(value),
            "model" => self.model = Some(value),
            "max_new_tokens" => self.max_new_tokens = num("max_new_tokens", &value)?,
            "temperature" => self.temperature = num("temperature", &value)?,
            "top_p" => self.top_p = num("top_p", &value)?,
            "seed" => self.seed = num("seed", &value)?,
            "grammar" => self.grammar = num("grammar", &value)?,
            "observe_tokens" => self.observe_tokens = num("observe_tokens", &value)?,
            "think_tokens" => self.think_tokens = num("think_tokens", &value)?,
            "speculate" => self.speculate = num("speculate", &value)?,
            other => return Err(ApiError::invalid("multipart", format!("unknown field `{other}`"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_lettered() {
        let q = question_with_options(" Where is the cat? ", &["left".into(), "right ".into()]).unwrap();
        assert_eq!(q, "Where is the cat? (A) left (B) right");
        assert!(question_with_options("q", &["".into()]).is_err());
        assert!(question_with_options("q", &vec!["x".to_string(); 27]).is_err());
    }

    #[test]
    fn multipart_fields_are_typed() {
        let mut r = SceneRequest::default();
        r.set_field("seed", "7".into()).unwrap();
        r.set_field("grammar", "false".into()).unwrap();
        r.set_field("options", "a".into()).unwrap();
        r.set_field("options", "b".into()).unwrap();
        assert_eq!((r.seed, r.grammar, r.options.len()), (Some(7), Some(false), 2));
        assert!(r.set_field("seed", "x".into()).is_err());
        assert!(r.set_field("nope", "x".into()).is_err());
    }
}

//! `POST /v1/chat/completions` as the official OpenAI clients send it: the request's shape, what
//! it becomes (an image, a [`Prompt`], [`GenerateOptions`]) and the response and stream chunks.
//!
//! st's own settings ride in an `st` object (`extra_body={"st": {...}}` in the Python client):
//! `template` (`"spatialthinker"`, the default: SpatialThinker's instruction around the user's
//! text, the grammar on; `"chat"`: the messages through the chat template as they are, no
//! grammar), `grammar`, `observe_tokens`, `think_tokens`, `speculate`.

use crate::error::ApiError;
use crate::images::{ImageInput, ImageSources};
use crate::workers::{Finished, Prompt};
use serde::Deserialize;
use serde_json::{Value, json};
use st::decode::SamplingParams;
use st::decode::grammar::Bounds;
use st::engine::{GenerateOptions, StopReason};
use st::prompt::{Content, Message};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub stop: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<Value>,
    pub modalities: Option<Vec<String>>,
    pub audio: Option<Value>,
    pub prediction: Option<Value>,
    pub st: Option<StOptions>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// st's own request settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StOptions {
    #[serde(default)]
    pub template: Template,
    pub grammar: Option<bool>,
    pub observe_tokens: Option<u32>,
    pub think_tokens: Option<u32>,
    pub speculate: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    #[default]
    Spatialthinker,
    Chat,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// What a chat request asks the workers for.
#[derive(Debug)]
pub struct Parsed {
    pub image: Option<ImageInput>,
    pub prompt: Prompt,
    pub opts: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
}

/// The sampling settings both endpoints take: absent temperature, 0, or `top_p` 0 is greedy
/// (SpatialThinker's evaluation setting); without a `seed` a sampled request gets a fresh one.
pub fn sampling(temperature: Option<f32>, top_p: Option<f32>, seed: Option<i64>) -> Result<SamplingParams, ApiError> {
    if let Some(t) = temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid("temperature", format!("{t} is not in [0, 2]")));
    }
    if let Some(p) = top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid("top_p", format!("{p} is not in [0, 1]")));
    }
    let greedy = temperature.is_none_or(|t| t == 0.0) || top_p == Some(0.0);
    let seed = match seed {
        Some(s) => s as u64,
        None if greedy => 0,
        None => fresh_seed(),
    };
    Ok(SamplingParams {
        temperature: if greedy { None } else { temperature },
        top_p: if greedy { 1.0 } else { top_p.unwrap_or(1.0) },
        seed,
        ..SamplingParams::default()
    })
}

/// The grammar's free-text budgets, where a request sets them.
pub fn bounds(observe_tokens: Option<u32>, think_tokens: Option<u32>) -> Bounds {
    let d = Bounds::default();
    Bounds {
        observe_tokens: observe_tokens.unwrap_or(d.observe_tokens),
        think_tokens: think_tokens.unwrap_or(d.think_tokens),
        ..d
    }
}

fn fresh_seed() -> u64 {
    let h = unique_hash();
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

/// A hash no other call in any process gets (time, process id and a counter): fresh seeds, response ids.
pub fn unique_hash() -> blake3::Hash {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    blake3::hash(&[now.as_nanos().to_le_bytes().as_slice(), &n.to_le_bytes(), &pid.to_le_bytes()].concat())
}

/// Refuse the OpenAI fields this server does not implement when they ask for something.
fn refuse_unsupported(r: &ChatRequest) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("n", "one choice per request"));
    }
    for (param, v) in [
        ("tools", &r.tools),
        ("tool_choice", &r.tool_choice),
        ("functions", &r.functions),
        ("function_call", &r.function_call),
        ("audio", &r.audio),
        ("prediction", &r.prediction),
    ] {
        if set(v) {
            return Err(ApiError::unsupported(param, "not implemented"));
        }
    }
    if r.stop.as_ref().is_some_and(|v| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty()))) {
        return Err(ApiError::unsupported(
            "stop",
            "stop sequences are not implemented (generation ends at the end of turn)",
        ));
    }
    if let Some(f) = &r.response_format
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::unsupported(
            "response_format",
            "only {\"type\": \"text\"}; SpatialThinker's format is constrained by the grammar (st.grammar)",
        ));
    }
    if r.logprobs == Some(true) || r.top_logprobs.is_some_and(|n| n > 0) {
        return Err(ApiError::unsupported("logprobs", "not implemented"));
    }
    for (param, v) in [("frequency_penalty", r.frequency_penalty), ("presence_penalty", r.presence_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::unsupported(param, "not implemented"));
        }
    }
    if r.logit_bias.as_ref().is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
        return Err(ApiError::unsupported("logit_bias", "not implemented"));
    }
    if r.modalities.as_ref().is_some_and(|m| m.iter().any(|m| m != "text")) {
        return Err(ApiError::unsupported("modalities", "text output only"));
    }
    Ok(())
}

/// Turn the request into a job's parts: at most one image, the prompt, the generation options.
pub fn parse(r: ChatRequest, sources: &ImageSources) -> Result<Parsed, ApiError> {
    refuse_unsupported(&r)?;
    let st = r.st.unwrap_or_default();
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages", "is empty"));
    }
    let mut image: Option<ImageInput> = None;
    let mut messages = Vec::with_capacity(r.messages.len());
    for (i, m) in r.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::unsupported(
                    "messages",
                    format!("message {i} has role `{other}`; st serves system, developer, user and assistant messages"),
                ));
            }
        };
        let mut content = Vec::new();
        match m.content {
            None => {}
            Some(MessageContent::Text(t)) => content.push(Content::Text(t)),
            Some(MessageContent::Parts(parts)) => {
                for p in parts {
                    match p {
                        Part::Text { text } => content.push(Content::Text(text)),
                        Part::ImageUrl { image_url } => {
                            if role != "user" {
                                return Err(ApiError::invalid(
                                    "messages",
                                    format!("message {i}: images belong in user messages"),
                                ));
                            }
                            if image.is_some() {
                                return Err(ApiError::invalid(
                                    "messages",
                                    "too many images: st answers about one image per request",
                                ));
                            }
                            image = Some(sources.read_url(&image_url.url)?);
                            content.push(Content::Image);
                        }
                    }
                }
            }
        }
        messages.push(Message { role: role.into(), content });
    }
    let prompt = match st.template {
        Template::Chat => Prompt::Chat { messages },
        Template::Spatialthinker => {
            let [m] = messages.as_slice() else {
                return Err(ApiError::invalid(
                    "messages",
                    "the SpatialThinker template takes one user message (an image and the question); send \"st\": {\"template\": \"chat\"} for a conversation",
                ));
            };
            if m.role != "user" {
                return Err(ApiError::invalid("messages", "the SpatialThinker template takes one user message"));
            }
            if image.is_none() {
                return Err(ApiError::invalid(
                    "messages",
                    "the SpatialThinker template needs an image (an image_url part); send \"st\": {\"template\": \"chat\"} for text only",
                ));
            }
            let texts: Vec<&str> = m
                .content
                .iter()
                .filter_map(|c| if let Content::Text(t) = c { Some(t.as_str()) } else { None })
                .collect();
            Prompt::SpatialThinker { question: texts.join("\n") }
        }
    };
    let grammar = st.grammar.unwrap_or(st.template == Template::Spatialthinker);
    if grammar && st.template == Template::Chat {
        return Err(ApiError::invalid(
            "st.grammar",
            "the grammar constrains SpatialThinker's format: it needs st.template \"spatialthinker\"",
        ));
    }
    let max_new = r.max_completion_tokens.or(r.max_tokens);
    let bounds = bounds(st.observe_tokens, st.think_tokens);
    let opts = GenerateOptions {
        max_new_tokens: max_new.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        sampling: sampling(r.temperature, r.top_p, r.seed)?,
        grammar,
        bounds,
        speculate: st.speculate.unwrap_or(0),
        ..GenerateOptions::default()
    };
    let stream = r.stream.unwrap_or(false);
    Ok(Parsed { image, prompt, opts, stream, include_usage: r.stream_options.is_some_and(|o| o.include_usage) })
}

pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndOfTurn | StopReason::Callback => "stop",
        StopReason::MaxNewTokens => "length",
    }
}

pub fn usage(f: &Finished) -> Value {
    let (p, c) = (f.answer.prompt_tokens, f.answer.token_ids.len());
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// `chat.completion`: the whole answer; `st` carries `st-run --json`'s typed answer when there was an image.
pub fn completion(id: &str, created: u64, model: &str, f: &Finished) -> Value {
    let mut v = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": f.answer.raw},
            "finish_reason": finish_reason(f.answer.stop),
            "logprobs": null,
        }],
        "usage": usage(f),
    });
    if let Some(j) = &f.json {
        v["st"] = j.clone();
    }
    v
}

/// One `chat.completion.chunk`.
pub fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Parsed, ApiError> {
        let r: ChatRequest = serde_json::from_value(v).map_err(|e| ApiError::Malformed(e.to_string()))?;
        parse(r, &ImageSources { max_bytes: 1 << 20, local_dir: None })
    }

    const PNG: &str = "data:image/png;base64,iVBORw0KGgo=";

    fn user(parts: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": parts}]})
    }

    #[test]
    fn the_spatialthinker_template_takes_one_user_message_with_an_image() {
        let p = req(user(
            json!([{"type": "image_url", "image_url": {"url": PNG}}, {"type": "text", "text": "Where? (A) l (B) r"}]),
        ))
        .unwrap();
        assert!(matches!(&p.prompt, Prompt::SpatialThinker { question } if question == "Where? (A) l (B) r"));
        assert!(p.opts.grammar && p.image.is_some() && p.opts.sampling.temperature.is_none());
        let e = req(user(json!("hello"))).unwrap_err();
        assert!(e.to_string().contains("needs an image"), "{e}");
        let e = req(
            json!({"model": "m", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one user message"), "{e}");
    }

    #[test]
    fn the_chat_template_takes_conversations_and_text_only() {
        let p = req(json!({"model": "m", "st": {"template": "chat"},
            "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]}))
        .unwrap();
        let Prompt::Chat { messages } = &p.prompt else { panic!("chat") };
        assert_eq!(messages[0].role, "system");
        assert!(!p.opts.grammar && p.image.is_none());
        assert!(req(json!({"model": "m", "st": {"template": "chat", "grammar": true}, "messages": [{"role": "user", "content": "hi"}]})).is_err());
        assert!(req(json!({"model": "m", "st": {"templat": "chat"}, "messages": []})).is_err());
    }

    #[test]
    fn limits_and_unsupported_fields_are_refused_naming_the_field() {
        let img = json!({"type": "image_url", "image_url": {"url": PNG}});
        let e = req(user(json!([img, img]))).unwrap_err();
        assert!(e.to_string().contains("too many images"), "{e}");
        for (field, value) in [
            ("n", json!(2)),
            ("tools", json!([{}])),
            ("stop", json!(["x"])),
            ("logprobs", json!(true)),
            ("response_format", json!({"type": "json_object"})),
            ("frequency_penalty", json!(0.5)),
        ] {
            let mut v = user(json!([img, {"type": "text", "text": "q"}]));
            v[field] = value;
            let e = req(v).unwrap_err();
            assert_eq!(e.body()["error"]["code"], "unsupported_parameter", "{field}: {e}");
        }
        let mut v = user(json!([img]));
        v["temperature"] = json!(3.0);
        assert_eq!(req(v).unwrap_err().body()["error"]["param"], "temperature");
        // Harmless fields are ignored; max_completion_tokens wins over max_tokens.
        let mut v = user(json!([img]));
        v["user"] = json!("u");
        v["n"] = json!(1);
        v["max_tokens"] = json!(10);
        v["max_completion_tokens"] = json!(20);
        assert_eq!(req(v).unwrap().opts.max_new_tokens, Some(20));
        assert!(req(user(json!([{"type": "input_audio", "input_audio": {}}]))).is_err());
    }

    #[test]
    fn sampling_is_greedy_unless_asked() {
        assert_eq!(sampling(None, None, None).unwrap(), SamplingParams::default());
        assert_eq!(sampling(Some(0.0), Some(0.5), Some(3)).unwrap().temperature, None);
        let s = sampling(Some(0.7), Some(0.9), Some(-1)).unwrap();
        assert_eq!((s.temperature, s.top_p, s.seed), (Some(0.7), 0.9, u64::MAX));
        assert_ne!(sampling(Some(1.0), None, None).unwrap().seed, sampling(Some(1.0), None, None).unwrap().seed);
    }
}

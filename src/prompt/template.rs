//! Chat template rendering with minijinja, configured as transformers configures Jinja2
//! (`trim_blocks`, `lstrip_blocks`, Python-style string methods, `raise_exception`).

use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Image,
    Text(String),
}

/// A chat message with a list of content parts (the form the Qwen2.5-VL template expects).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: Vec<Content>,
}

impl Message {
    pub fn user(content: Vec<Content>) -> Self {
        Self { role: "user".into(), content }
    }
    pub fn system(text: impl Into<String>) -> Self {
        Self { role: "system".into(), content: vec![Content::Text(text.into())] }
    }
}

#[derive(Serialize)]
struct JPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct JMessage<'a> {
    role: &'a str,
    content: Vec<JPart<'a>>,
}

/// The checkpoint's chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub path: PathBuf,
}

impl ChatTemplate {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (source, path) = st_checkpoint::processor::chat_template(dir)?;
        let t = Self { source, path };
        // Compile once now so a broken template fails at load, naming its file.
        t.environment()?;
        Ok(t)
    }

    fn environment(&self) -> Result<minijinja::Environment<'static>> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", self.source.clone())
            .map_err(|e| Error::Template { path: self.path.clone(), reason: e.to_string() })?;
        Ok(env)
    }

    /// Render `messages`; with `add_generation_prompt` the assistant turn is opened.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let msgs: Vec<JMessage<'_>> = messages
            .iter()
            .map(|m| JMessage {
                role: &m.role,
                content: m
                    .content
                    .iter()
                    .map(|c| match c {
                        Content::Image => JPart { kind: "image", text: None },
                        Content::Text(t) => JPart { kind: "text", text: Some(t) },
                    })
                    .collect(),
            })
            .collect();
        let tmpl =
            env.get_template("chat").map_err(|e| Error::Template { path: self.path.clone(), reason: e.to_string() })?;
        tmpl.render(minijinja::context! { messages => msgs, add_generation_prompt => add_generation_prompt })
            .map_err(|e| Error::Template { path: self.path.clone(), reason: e.to_string() })
    }
}

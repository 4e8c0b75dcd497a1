//! Asking: a question about a frame → an `StAnswer` whose parts read without JSON (and as the
//! JSON `st-run --json` prints), whole or streamed token by token.

use crate::engine::StEngine;
use crate::frame::StFrame;
use crate::handle::{self, Handle};
use crate::status::{Error, Result, StStatus, guard, guard_value, utf8, write_out};
use st_core::decode::SamplingParams;
use st_core::engine::{Answer, GenerateOptions, StopReason};
use std::ffi::{CString, c_char, c_void};
use std::ops::ControlFlow;

/// How one answer is generated. Start from `st_generate_options_default()` and change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StGenerateOptions {
    /// At most this many new tokens; 0: 2048 or what the context leaves after the prompt.
    pub max_new_tokens: u32,
    /// 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// 1: off.
    pub top_p: f32,
    /// 1: off.
    pub repetition_penalty: f32,
    /// The sampling seed (a seed reproduces a run on any machine).
    pub seed: u64,
    /// Constrain the output to a valid response by construction (the default).
    pub grammar: bool,
}

/// Greedy, grammar on, the default token budget.
#[unsafe(no_mangle)]
pub extern "C" fn st_generate_options_default() -> StGenerateOptions {
    StGenerateOptions {
        max_new_tokens: 0,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed: 0,
        grammar: true,
    }
}

impl StGenerateOptions {
    fn to_rust(self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: (self.max_new_tokens > 0).then_some(self.max_new_tokens as usize),
            sampling: SamplingParams {
                temperature: (self.temperature != 0.0).then_some(self.temperature),
                top_k: self.top_k as usize,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            grammar: self.grammar,
            ..Default::default()
        }
    }
}

/// Why generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StStop {
    EndOfTurn = 0,
    MaxNewTokens = 1,
    /// The streaming callback returned non-zero.
    Callback = 2,
}

/// The scalar parts of an answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StAnswerInfo {
    /// The response follows every format rule (always, with the grammar on).
    pub valid: bool,
    /// The chosen option's letter ('A', 'B', …), 0 when the answer names none.
    pub letter: c_char,
    pub object_count: usize,
    pub relationship_count: usize,
    pub stop: StStop,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the frame.
    pub reused_prompt_tokens: usize,
    pub prefill_ms: f64,
    /// All decoder passes after the first token.
    pub decode_ms: f64,
    pub decode_tokens_per_s: f64,
}

/// The texts of an answer, for `st_answer_text`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StAnswerPart {
    /// The generated text (special tokens removed).
    Raw = 0,
    /// The whole answer as `st-run --json` prints it.
    Json = 1,
    Observe = 2,
    Think = 3,
    /// The chosen option's text (after its "(X)").
    OptionText = 4,
    /// Why the response is not valid, one reason per line (empty when valid).
    Reasons = 5,
}

/// One object of the scene graph; the strings live as long as the answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StObject {
    /// "label.N", e.g. "cup.1".
    pub id: *const c_char,
    pub label: *const c_char,
    /// x1, y1, x2, y2 in pixels of the original image.
    pub bbox: [f64; 4],
}

/// One relationship of the scene graph; the strings live as long as the answer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StRelationship {
    pub subject: *const c_char,
    pub predicate: *const c_char,
    pub object: *const c_char,
}

/// An answer with its strings converted once, so every accessor returns pointers into it.
pub struct StAnswer {
    info: StAnswerInfo,
    texts: [Option<CString>; 6],
    objects: Vec<(CString, CString, [f64; 4])>,
    relationships: Vec<[CString; 3]>,
}

impl Handle for StAnswer {
    const KIND: &'static str = "answer";
}

/// A C string of `s`; interior NUL bytes (which the model never writes) become spaces.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

impl StAnswer {
    fn new(a: &Answer, json: &serde_json::Value) -> Self {
        let r = &a.response;
        let scene = r.scene.as_ref();
        let t = &a.timings;
        let info = StAnswerInfo {
            valid: r.valid,
            letter: r.answer.as_ref().and_then(|c| c.letter).map_or(0, |l| l as u8 as c_char),
            object_count: scene.map_or(0, |s| s.objects.len()),
            relationship_count: scene.map_or(0, |s| s.relationships.len()),
            stop: match a.stop {
                StopReason::EndOfTurn => StStop::EndOfTurn,
                StopReason::MaxNewTokens => StStop::MaxNewTokens,
                StopReason::Callback => StStop::Callback,
            },
            new_tokens: a.token_ids.len(),
            prompt_tokens: a.prompt_tokens,
            reused_prompt_tokens: a.reused_prompt_tokens,
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms.iter().sum(),
            decode_tokens_per_s: t.decode_tokens_per_s(),
        };
        let texts = [
            Some(c_string(&a.raw)),
            Some(c_string(&json.to_string())),
            r.observe.as_deref().map(c_string),
            r.think.as_deref().map(c_string),
            r.answer.as_ref().map(|c| c_string(&c.text)),
            Some(c_string(&r.reasons.join("\n"))),
        ];
        let objects = scene
            .map(|s| s.objects.iter().map(|o| (c_string(&o.id), c_string(&o.label), o.bbox)).collect())
            .unwrap_or_default();
        let relationships = scene
            .map(|s| {
                s.relationships
                    .iter()
                    .map(|x| [c_string(&x.subject), c_string(&x.predicate), c_string(&x.object)])
                    .collect()
            })
            .unwrap_or_default();
        Self { info, texts, objects, relationships }
    }
}

/// Called with each generated token's text (NUL-terminated UTF-8, empty while a multi-byte
/// character is incomplete) and id; return 0 to go on, non-zero to stop generation.
pub type StTokenCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, text: *const c_char, token_id: u32) -> i32>;

unsafe fn ask(
    engine: *const StEngine,
    frame: *const StFrame,
    question: *const c_char,
    options: *const StGenerateOptions,
    callback: StTokenCallback,
    user_data: *mut c_void,
    out: *mut *mut StAnswer,
) -> StStatus {
    guard(|| {
        let e = unsafe { handle::get(engine, "engine") }?;
        let f = &unsafe { handle::get(frame, "frame") }?.frame;
        let question = unsafe { utf8(question, "question") }?;
        // SAFETY: NULL or a valid StGenerateOptions by contract.
        let opts = if options.is_null() { st_generate_options_default() } else { unsafe { *options } }.to_rust();
        if out.is_null() {
            return Err(Error::Null { name: "out" });
        }
        let mut engine = e.lock();
        let answer = engine.ask_streaming(f, question, &opts, |t| {
            let Some(cb) = callback else { return ControlFlow::Continue(()) };
            let text = c_string(t.text);
            // SAFETY: the caller's callback, called with the user data it gave.
            if unsafe { cb(user_data, text.as_ptr(), t.id) } == 0 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        let json = answer.to_json(f, engine.model());
        unsafe { write_out(out, "out", handle::into_raw(StAnswer::new(&answer, &json))) }
    })
}

/// Answer `question` about `frame` with `options` (NULL: the defaults) and store the answer in
/// `*out`. Free it with `st_answer_free`.
///
/// # Safety
/// `engine` and `frame` are NULL or pointers st returned; `question` is NULL or NUL-terminated;
/// `options` is NULL or valid; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_ask(
    engine: *const StEngine,
    frame: *const StFrame,
    question: *const c_char,
    options: *const StGenerateOptions,
    out: *mut *mut StAnswer,
) -> StStatus {
    unsafe { ask(engine, frame, question, options, None, std::ptr::null_mut(), out) }
}

/// `st_ask`, calling `callback(user_data, text, token_id)` on this thread with each token as it is
/// generated; a non-zero return stops generation (the answer then ends with `ST_STOP_CALLBACK`).
///
/// # Safety
/// As `st_ask`; `callback` is NULL or a function that may be called with `user_data`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_ask_stream(
    engine: *const StEngine,
    frame: *const StFrame,
    question: *const c_char,
    options: *const StGenerateOptions,
    callback: StTokenCallback,
    user_data: *mut c_void,
    out: *mut *mut StAnswer,
) -> StStatus {
    unsafe { ask(engine, frame, question, options, callback, user_data, out) }
}

/// Fill `*info` with the answer's scalar parts.
///
/// # Safety
/// `answer` is NULL or a pointer st returned; `info` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_answer_info(answer: *const StAnswer, info: *mut StAnswerInfo) -> StStatus {
    guard(|| {
        let a = unsafe { handle::get(answer, "answer") }?;
        unsafe { write_out(info, "info", a.info) }
    })
}

/// One of the answer's texts (`StAnswerPart`), NUL-terminated UTF-8 owned by the answer; NULL when the
/// response has no such section, or on a bad argument (see `st_last_error`).
///
/// # Safety
/// `answer` is NULL or a pointer st returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_answer_text(answer: *const StAnswer, part: u32) -> *const c_char {
    guard_value(std::ptr::null(), || {
        let a = unsafe { handle::get(answer, "answer") }?;
        let text = a
            .texts
            .get(part as usize)
            .ok_or_else(|| Error::Invalid { name: "part", reason: format!("{part} is not an StAnswerPart") })?;
        Ok(text.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
    })
}

fn nth<'a, T>(items: &'a [T], i: usize, what: &'static str) -> Result<&'a T> {
    items
        .get(i)
        .ok_or_else(|| Error::Invalid { name: what, reason: format!("{i} is past the last of {}", items.len()) })
}

/// The `index`-th object of the scene graph, in the model's order.
///
/// # Safety
/// `answer` is NULL or a pointer st returned; `object` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_answer_object(answer: *const StAnswer, index: usize, object: *mut StObject) -> StStatus {
    guard(|| {
        let a = unsafe { handle::get(answer, "answer") }?;
        let (id, label, bbox) = nth(&a.objects, index, "index")?;
        unsafe { write_out(object, "object", StObject { id: id.as_ptr(), label: label.as_ptr(), bbox: *bbox }) }
    })
}

/// The `index`-th relationship of the scene graph.
///
/// # Safety
/// `answer` is NULL or a pointer st returned; `relationship` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_answer_relationship(
    answer: *const StAnswer,
    index: usize,
    relationship: *mut StRelationship,
) -> StStatus {
    guard(|| {
        let a = unsafe { handle::get(answer, "answer") }?;
        let [s, p, o] = nth(&a.relationships, index, "index")?;
        let value = StRelationship { subject: s.as_ptr(), predicate: p.as_ptr(), object: o.as_ptr() };
        unsafe { write_out(relationship, "relationship", value) }
    })
}

/// Free an answer (and every string it handed out). NULL is a no-op; a pointer that is not a live
/// answer is left alone (ST_STATUS_INVALID_HANDLE).
///
/// # Safety
/// No other call may be using `answer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_answer_free(answer: *mut StAnswer) -> StStatus {
    guard(|| unsafe { handle::free(answer, "answer") })
}

//! The SpatialThinker output as a byte-level recognizer (toktrie's [`Recognizer`]): every byte
//! the model may write next is decided here, so the semantic rules of docs/FORMATS.md#the-response hold by
//! construction, not by checking afterwards:
//!
//! ```text
//! <observe>TEXT</observe>\n<scene>\n{"objects": [OBJ, …], "relationships": [REL, …]}\n</scene>\n
//! <think>TEXT</think>\n<answer> (X) option </answer>            (or <answer>TEXT</answer>)
//! OBJ = {"id": "label.N", "bbox": [x1, y1, x2, y2]}    REL = {"subject": "ID", "predicate": "…", "object": "ID"}
//! ```
//!
//! - boxes: integers without leading zeros, 0 ≤ x1 < x2 ≤ W and 0 ≤ y1 < y2 ≤ H — each digit is
//!   allowed only if the number can still be completed inside its range (x2's range starts at x1 + 1);
//! - ids: `[A-Za-z_]+\.[0-9]+`, the closing quote refused for an id already declared;
//! - relationship ends: only prefixes of declared ids (a byte trie over them), none when no
//!   object was declared;
//! - the answer: one of the options' exact strings when the question offers options;
//! - free text: any bytes but `<`, which starts the closing tag; once a section has used its
//!   token budget, only its closing tag (a free-text answer first needs one visible byte);
//! - near the generation's token limit, only the shortest way to a complete answer.
//!
//! The JSON layout is Python's `json.dumps` default (`", "` and `": "`), the layout of
//! SpatialThinker's training scenes; the fixed parts are therefore forced bytes.

use super::spec::OutputSpec;
use arrayvec::ArrayVec;
use std::sync::Arc;
use toktrie::Recognizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Observe,
    Think,
    Answer,
}

impl Section {
    fn close(self) -> &'static [u8] {
        match self {
            Section::Observe => b"</observe>",
            Section::Think => b"</think>",
            Section::Answer => b"</answer>",
        }
    }
}

/// Fixed byte strings and what follows each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lit {
    Open,
    SceneHead,
    IdKey,
    BboxKey,
    ObjClose,
    NextObj,
    RelHead,
    SubjKey,
    PredKey,
    ObjKey,
    RelClose,
    NextRel,
    SceneTail,
    AnswerHead,
}

impl Lit {
    fn text(self) -> &'static [u8] {
        match self {
            Lit::Open => b"<observe>",
            Lit::SceneHead => b"\n<scene>\n{\"objects\": [",
            Lit::IdKey => b"\"id\": \"",
            Lit::BboxKey => b", \"bbox\": [",
            Lit::ObjClose => b"}",
            Lit::NextObj => b" {\"id\": \"",
            Lit::RelHead => b", \"relationships\": [",
            Lit::SubjKey => b"\"subject\": \"",
            Lit::PredKey => b", \"predicate\": \"",
            Lit::ObjKey => b", \"object\": \"",
            Lit::RelClose => b"}",
            Lit::NextRel => b" {\"subject\": \"",
            Lit::SceneTail => b"}\n</scene>\n<think>",
            Lit::AnswerHead => b"\n<answer>",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Lit {
        lit: Lit,
        pos: u8,
    },
    /// Free text; `close` bytes of the closing tag matched so far.
    Text {
        section: Section,
        close: u8,
    },
    /// An object's id; `dot` once the `.` is written (the id so far is in `buf`).
    Id {
        dot: bool,
    },
    /// Coordinate `coord` (0..4 = x1, y1, x2, y2) so far.
    Num {
        coord: u8,
        value: u32,
        digits: u8,
    },
    /// The space after a coordinate's comma.
    Sep {
        next: u8,
    },
    ObjectsStart,
    AfterObject,
    RelStart,
    AfterRel,
    /// A relationship end (prefix in `buf`).
    Ref {
        object: bool,
    },
    Predicate {
        len: u8,
    },
    /// The answer after `<answer>`: the first `len` bytes of the allowed tail `tail` (and of every
    /// tail sharing them). Held as a position, not as bytes, so an option of any length fits.
    Choice {
        tail: u16,
        len: u16,
    },
    Done,
}

/// The state after some bytes. Cheap to clone: declared ids are shared until one is added.
#[derive(Debug, Clone)]
pub struct State {
    phase: Phase,
    buf: ArrayVec<u8, 96>,
    x1: u32,
    y1: u32,
    objects: u32,
    relationships: u32,
    declared: Arc<Vec<Box<[u8]>>>,
    /// Tokens committed in the current free-text section, and whether it must close now.
    pub(super) section_tokens: u32,
    pub(super) force_close: bool,
    /// Few tokens are left: only the shortest way to a complete answer is allowed.
    pub(super) finishing: bool,
    /// The current free-text section holds only whitespace so far.
    blank: bool,
}

impl State {
    fn initial() -> Self {
        Self {
            phase: Phase::Lit { lit: Lit::Open, pos: 0 },
            buf: ArrayVec::new(),
            x1: 0,
            y1: 0,
            objects: 0,
            relationships: 0,
            declared: Arc::new(Vec::new()),
            section_tokens: 0,
            force_close: false,
            finishing: false,
            blank: true,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Hold the state to the shortest way to a complete output, as the matcher does when the tokens
    /// left come down to [`SceneRules::finish_reserve`].
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// Inside a predicate: how many more bytes it may take.
    pub fn predicate_room(&self, bounds: &super::spec::Bounds) -> Option<usize> {
        match self.phase {
            Phase::Predicate { len } => {
                let room = usize::from(bounds.max_predicate_bytes.saturating_sub(len));
                Some(if self.finishing { room.min(usize::from(len == 0)) } else { room })
            }
            _ => None,
        }
    }

    /// Where the output is, for error messages.
    pub fn phase(&self) -> impl std::fmt::Debug + '_ {
        (&self.phase, String::from_utf8_lossy(&self.buf))
    }

    /// The free-text section a token starting here belongs to, if any.
    pub fn text_section(&self) -> Option<Section> {
        match self.phase {
            Phase::Text { section, close: 0 } => Some(section),
            _ => None,
        }
    }
}

/// The grammar of one request: the rules (`spec`) and the allowed answer tails.
#[derive(Debug, Clone)]
pub struct SceneRules {
    pub spec: OutputSpec,
    /// ` (A) text </answer>` for each option.
    tails: Vec<Vec<u8>>,
}

/// A byte a relationship's predicate may hold (a JSON string byte needing no escape).
pub fn is_predicate_byte(b: u8) -> bool {
    !matches!(b, b'"' | b'\\' | 0..0x20 | 0x7f | 0xff)
}

/// Whether a free answer is still blank after byte `b`, as the validator's `str::trim` sees it
/// (Unicode White_Space: ASCII's vertical tab and form feed, no-break and ideographic spaces, …): a
/// multi-byte character is held in `pending` until complete; bytes that are no UTF-8 are visible
/// (they decode to U+FFFD).
fn still_blank(pending: &mut ArrayVec<u8, 96>, b: u8) -> bool {
    if b < 0x80 {
        pending.clear();
        return char::from(b).is_whitespace();
    }
    if pending.try_push(b).is_err() {
        pending.clear();
        return false;
    }
    match std::str::from_utf8(pending) {
        Ok(text) => {
            let blank = text.chars().all(char::is_whitespace);
            pending.clear();
            blank
        }
        Err(e) if e.error_len().is_none() => true, // an incomplete character: nothing visible yet
        Err(_) => {
            pending.clear();
            false
        }
    }
}

/// Can a number starting with the digits of `prefix` still end inside `lo..=hi`?
fn completable(prefix: u32, lo: u32, hi: u32) -> bool {
    let (mut min, mut max) = (u64::from(prefix), u64::from(prefix));
    for _ in 0..10 {
        if min > u64::from(hi) {
            return false;
        }
        if max >= u64::from(lo) {
            return true;
        }
        (min, max) = (min * 10, max * 10 + 9);
    }
    false
}

impl SceneRules {
    pub fn new(spec: OutputSpec) -> Self {
        let tails = spec.options.answers().into_iter().map(|a| format!(" {a} </answer>").into_bytes()).collect();
        Self { spec, tails }
    }

    pub fn initial(&self) -> State {
        State::initial()
    }

    /// Tokens kept in reserve for closing the output: an upper bound on the bytes (hence
    /// tokens) the shortest completion takes from any state in finishing mode — the rest of an
    /// object (≤ 80 bytes with the longest label), of a relationship (≤ 2 ids + 1 byte), the
    /// fixed tail (≤ 40) and the longest answer.
    pub fn finish_reserve(&self) -> u32 {
        let b = &self.spec.bounds;
        let id = u32::from(b.max_label_bytes) + u32::from(b.max_id_digits) + 1;
        let longest_tail = self.tails.iter().map(Vec::len).max().unwrap_or(0) as u32;
        let text_close = 12;
        80 + id + 2 * id + 60 + 40 + text_close + longest_tail.max(16)
    }

    /// Bytes that take `s`, held to finishing mode, to a complete output in at most `max_bytes`: the
    /// first such string in byte order (a depth-first search of at most `max_steps` steps), or `None`.
    /// Every prefix the rules accept must have one within [`Self::finish_reserve`] bytes — what lets a
    /// generation whose tokens run out still end valid; the grammar fuzz target and the property tests
    /// check it.
    pub fn completion(&self, s: &State, max_bytes: usize, max_steps: usize) -> Option<Vec<u8>> {
        let mut start = s.clone();
        start.finish();
        // The path so far: each state with the next byte to try from it.
        let mut path: Vec<(State, u16)> = vec![(start, 0)];
        let mut steps = 0;
        loop {
            let depth = path.len();
            let (state, next) = path.last_mut()?;
            if state.is_done() {
                // Each state's last tried byte led to the next state on the path.
                return Some(path[..depth - 1].iter().map(|(_, b)| (*b - 1) as u8).collect());
            }
            if *next > 255 || depth > max_bytes {
                path.pop();
                continue;
            }
            if steps >= max_steps {
                return None;
            }
            steps += 1;
            let byte = *next as u8;
            *next += 1;
            if let Some(n) = self.step(state, byte) {
                path.push((n, 0));
            }
        }
    }

    fn range(&self, s: &State, coord: u8) -> (u32, u32) {
        let (w, h) = self.spec.image_size;
        match coord {
            0 => (0, w.saturating_sub(1)),
            1 => (0, h.saturating_sub(1)),
            2 => (s.x1 + 1, w),
            _ => (s.y1 + 1, h),
        }
    }

    fn enter_text(s: &mut State, section: Section) {
        s.phase = Phase::Text { section, close: 0 };
        s.buf.clear();
        s.blank = true;
        s.section_tokens = 0;
        s.force_close = false;
    }

    /// The phase after literal `lit` is complete.
    fn after_lit(&self, s: &mut State, lit: Lit) {
        s.buf.clear();
        s.phase = match lit {
            Lit::Open => return Self::enter_text(s, Section::Observe),
            Lit::SceneHead => Phase::ObjectsStart,
            Lit::IdKey | Lit::NextObj => Phase::Id { dot: false },
            Lit::BboxKey => Phase::Num { coord: 0, value: 0, digits: 0 },
            Lit::ObjClose => Phase::AfterObject,
            Lit::RelHead => Phase::RelStart,
            Lit::SubjKey | Lit::NextRel => Phase::Ref { object: false },
            Lit::PredKey => Phase::Predicate { len: 0 },
            Lit::ObjKey => Phase::Ref { object: true },
            Lit::RelClose => Phase::AfterRel,
            Lit::SceneTail => return Self::enter_text(s, Section::Think),
            Lit::AnswerHead => {
                if self.tails.is_empty() {
                    return Self::enter_text(s, Section::Answer);
                }
                Phase::Choice { tail: 0, len: 0 }
            }
        };
    }

    fn lit(s: &mut State, lit: Lit) {
        s.phase = Phase::Lit { lit, pos: 0 };
    }

    /// `s` extended by byte `b`, or `None` when the rules forbid it.
    pub fn step(&self, s: &State, b: u8) -> Option<State> {
        let mut n = s.clone();
        let bounds = &self.spec.bounds;
        match s.phase {
            Phase::Lit { lit, pos } => {
                let text = lit.text();
                if text[pos as usize] != b {
                    return None;
                }
                if pos as usize + 1 == text.len() {
                    self.after_lit(&mut n, lit);
                } else {
                    n.phase = Phase::Lit { lit, pos: pos + 1 };
                }
            }
            Phase::Text { section, close } => {
                let tag = section.close();
                if close == 0 {
                    if b == 0xff {
                        return None; // toktrie's special-token marker, never in UTF-8 text
                    }
                    // A free-text answer needs one visible byte before it may close.
                    let needs_text = section == Section::Answer && s.blank;
                    if b != b'<' {
                        if s.force_close || s.finishing {
                            // Closing: only a free answer's first visible byte is still allowed, and
                            // then an ASCII one (a single byte, visible to any reader).
                            if !(needs_text && b.is_ascii_graphic()) {
                                return None;
                            }
                            n.blank = false;
                        } else if needs_text {
                            n.blank = still_blank(&mut n.buf, b);
                        }
                        return Some(n);
                    }
                    if needs_text {
                        return None;
                    }
                    n.phase = Phase::Text { section, close: 1 };
                } else {
                    if tag[close as usize] != b {
                        return None;
                    }
                    if close as usize + 1 < tag.len() {
                        n.phase = Phase::Text { section, close: close + 1 };
                    } else {
                        n.section_tokens = 0;
                        n.force_close = false;
                        match section {
                            Section::Observe => Self::lit(&mut n, Lit::SceneHead),
                            Section::Think => Self::lit(&mut n, Lit::AnswerHead),
                            Section::Answer => n.phase = Phase::Done,
                        }
                    }
                }
            }
            Phase::ObjectsStart | Phase::AfterObject => {
                let first = s.phase == Phase::ObjectsStart;
                match b {
                    b'{' if first && !s.finishing && s.objects < bounds.max_objects => Self::lit(&mut n, Lit::IdKey),
                    b',' if !first && !s.finishing && s.objects < bounds.max_objects => Self::lit(&mut n, Lit::NextObj),
                    b']' => Self::lit(&mut n, Lit::RelHead),
                    _ => return None,
                }
            }
            Phase::Id { dot } => {
                let digits = if dot { s.buf.iter().rev().take_while(|c| c.is_ascii_digit()).count() } else { 0 };
                match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'_'
                        if !dot
                            && s.buf.len() < bounds.max_label_bytes as usize
                            && (s.buf.is_empty() || !s.finishing) => {}
                    b'.' | b'0'..=b'9' if (b == b'.' && !dot && !s.buf.is_empty()) || (b != b'.' && dot) => {
                        // The id prefix must still complete to an id not yet declared.
                        let mut id = s.buf.clone();
                        id.try_push(b).ok()?;
                        let digits = if b == b'.' { 0 } else { digits + 1 };
                        if !id_completable(&id, digits, bounds.max_id_digits as usize, &s.declared) {
                            return None;
                        }
                        if b == b'.' {
                            n.phase = Phase::Id { dot: true };
                        }
                    }
                    b'"' if dot && digits > 0 => {
                        if s.declared.iter().any(|d| **d == s.buf[..]) {
                            return None;
                        }
                        Arc::make_mut(&mut n.declared).push(s.buf.to_vec().into_boxed_slice());
                        n.objects += 1;
                        Self::lit(&mut n, Lit::BboxKey);
                        return Some(n);
                    }
                    _ => return None,
                }
                n.buf.try_push(b).ok()?;
            }
            Phase::Num { coord, value, digits } => {
                let (lo, hi) = self.range(s, coord);
                match b {
                    b'0'..=b'9' => {
                        if digits > 0 && value == 0 {
                            return None; // no leading zeros
                        }
                        let v = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
                        // A leading 0 is the whole number.
                        let ok = if digits == 0 && v == 0 { lo == 0 } else { completable(v, lo, hi) };
                        if !ok {
                            return None;
                        }
                        n.phase = Phase::Num { coord, value: v, digits: digits + 1 };
                    }
                    b',' if coord < 3 && digits > 0 && (lo..=hi).contains(&value) => {
                        match coord {
                            0 => n.x1 = value,
                            1 => n.y1 = value,
                            _ => {}
                        }
                        n.phase = Phase::Sep { next: coord + 1 };
                    }
                    b']' if coord == 3 && digits > 0 && (lo..=hi).contains(&value) => Self::lit(&mut n, Lit::ObjClose),
                    _ => return None,
                }
            }
            Phase::Sep { next } => {
                if b != b' ' {
                    return None;
                }
                n.phase = Phase::Num { coord: next, value: 0, digits: 0 };
            }
            Phase::RelStart | Phase::AfterRel => {
                let first = s.phase == Phase::RelStart;
                let more = !s.finishing && s.relationships < bounds.max_relationships && !s.declared.is_empty();
                match b {
                    b'{' if first && more => Self::lit(&mut n, Lit::SubjKey),
                    b',' if !first && more => Self::lit(&mut n, Lit::NextRel),
                    b']' => Self::lit(&mut n, Lit::SceneTail),
                    _ => return None,
                }
            }
            Phase::Ref { object } => {
                if b == b'"' {
                    if !s.declared.iter().any(|d| **d == s.buf[..]) {
                        return None;
                    }
                    if object {
                        n.relationships += 1;
                        Self::lit(&mut n, Lit::RelClose);
                    } else {
                        Self::lit(&mut n, Lit::PredKey);
                    }
                    return Some(n);
                }
                n.buf.try_push(b).ok()?;
                if !s.declared.iter().any(|d| d.starts_with(&n.buf)) {
                    return None;
                }
            }
            Phase::Predicate { len } => match b {
                b'"' if len > 0 => Self::lit(&mut n, Lit::ObjKey),
                _ if is_predicate_byte(b) && len < bounds.max_predicate_bytes && (len == 0 || !s.finishing) => {
                    n.phase = Phase::Predicate { len: len + 1 }
                }
                _ => return None,
            },
            Phase::Choice { tail, len } => {
                let (len, prefix) = (usize::from(len), &self.tails[usize::from(tail)]);
                let next = self.tails.iter().position(|t| t.len() > len && t[..len] == prefix[..len] && t[len] == b)?;
                n.phase = if self.tails[next].len() == len + 1 {
                    Phase::Done
                } else {
                    Phase::Choice { tail: u16::try_from(next).ok()?, len: u16::try_from(len + 1).ok()? }
                };
            }
            Phase::Done => return None,
        }
        Some(n)
    }
}

/// [`SceneRules`] as toktrie's stack-based [`Recognizer`], for the trie walk of mask
/// computation: the stack holds the state after each byte of the token being tried.
pub struct SceneRecognizer<'a> {
    pub rules: &'a SceneRules,
    pub stack: Vec<State>,
}

impl Recognizer for SceneRecognizer<'_> {
    fn pop_bytes(&mut self, num: usize) {
        let keep = self.stack.len().saturating_sub(num).max(1);
        self.stack.truncate(keep);
    }

    fn collapse(&mut self) {
        if let Some(top) = self.stack.pop() {
            self.stack.clear();
            self.stack.push(top);
        }
    }

    fn trie_finished(&mut self) {
        self.stack.truncate(1);
    }

    fn try_push_byte(&mut self, byte: u8) -> bool {
        let Some(top) = self.stack.last() else { return false };
        match self.rules.step(top, byte) {
            Some(next) => {
                self.stack.push(next);
                true
            }
            None => false,
        }
    }
}

/// Whether the id prefix `id` (ending in its `digits` digits after the dot) can still become an id
/// that is not in `declared`: the ids it can become (itself if it has a digit, and every extension by
/// up to `max_digits` digits in all) outnumber the declared ones among them. Ids are unique, so the
/// count is exact; without it a prefix such as `x.28` with `x.28` and `x.280`–`x.289` declared
/// would be accepted and then have no continuation.
fn id_completable(id: &[u8], digits: usize, max_digits: usize, declared: &[Box<[u8]>]) -> bool {
    if digits > max_digits {
        return false;
    }
    let mut possible: u64 = u64::from(digits > 0);
    let mut width: u64 = 1;
    for _ in digits..max_digits {
        width = width.saturating_mul(10);
        possible = possible.saturating_add(width);
    }
    let taken = declared
        .iter()
        .filter(|d| {
            d.len() >= id.len()
                && d.starts_with(id)
                && d[id.len()..].iter().all(u8::is_ascii_digit)
                && digits + (d.len() - id.len()) <= max_digits
        })
        .count() as u64;
    taken < possible
}

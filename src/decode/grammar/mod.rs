//! Grammar-constrained decoding: every answer is a valid scene graph, syntactically and
//! semantically (docs/FORMATS.md#the-response), by construction.
//!
//! Following llguidance's loop: one [`GrammarFactory`] per tokenizer (toktrie's token trie over
//! the model's `tokenizer.json`, padded to the logits' vocabulary), one [`SceneMatcher`] per
//! request; `compute_mask → sample → commit`. The rules are a byte-level recognizer
//! ([`recognizer`]) walked over the token trie, because a context-free grammar cannot say
//! "x2 > x1" or "an id declared above" (docs/GRAMMAR.md explains the choice). Errors are sticky:
//! after one, every call reports it.

pub mod recognizer;
pub mod spec;

pub use recognizer::{SceneRecognizer, SceneRules, Section, State};
pub use spec::{Bounds, OutputSpec};

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use toktrie::{SimpleVob, TokEnv};

/// The token trie of one tokenizer, shared by every request.
#[derive(Clone)]
pub struct GrammarFactory {
    env: TokEnv,
    /// Tokens free text takes in any state before its closing tag (no `<`, not special).
    plain_text: Arc<SimpleVob>,
    /// Tokens containing `<` (checked byte by byte in free text).
    with_lt: Arc<Vec<u32>>,
    /// Tokens made only of bytes a predicate may hold, with their lengths.
    predicate_plain: Arc<Vec<(u32, usize)>>,
    /// The other tokens (with a quote, backslash or control byte), checked byte by byte.
    predicate_other: Arc<Vec<u32>>,
    /// Tokens that end the turn (allowed once the answer is complete).
    end_of_turn: Vec<u32>,
}

impl std::fmt::Debug for GrammarFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarFactory").field("vocab", &self.env.tok_trie().vocab_size()).finish()
    }
}

impl GrammarFactory {
    /// Build the trie of `tokenizer.json`, padded to `vocab_size` logits; `end_of_turn` are the
    /// ids that may close a complete answer.
    pub fn from_tokenizer_file(path: &Path, vocab_size: usize, end_of_turn: Vec<u32>) -> Result<Self> {
        let err = |e: anyhow::Error| Error::Tokenizer { path: path.to_path_buf(), reason: format!("token trie: {e}") };
        let tok = toktrie_hf_tokenizers::ByteTokenizer::from_file(path).map_err(err)?;
        let env = tok.into_tok_env(Some(vocab_size)).map_err(err)?;
        if let Some(&bad) = end_of_turn.iter().find(|&&t| t as usize >= env.tok_trie().vocab_size()) {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("end-of-turn id {bad} is outside the vocabulary"),
            });
        }
        let trie = env.tok_trie();
        let mut plain_text = trie.alloc_token_set();
        let mut with_lt = Vec::new();
        let (mut predicate_plain, mut predicate_other) = (Vec::new(), Vec::new());
        for t in 0..trie.vocab_size() as u32 {
            let bytes = trie.token(t);
            if bytes.is_empty() || bytes.contains(&0xff) {
                continue; // special tokens carry toktrie's 0xff marker
            }
            if bytes.iter().all(|&b| recognizer::is_predicate_byte(b)) {
                predicate_plain.push((t, bytes.len()));
            } else {
                predicate_other.push(t);
            }
            if bytes.contains(&b'<') {
                with_lt.push(t);
            } else {
                plain_text.allow_token(t);
            }
        }
        Ok(Self {
            env,
            end_of_turn,
            plain_text: Arc::new(plain_text),
            with_lt: Arc::new(with_lt),
            predicate_plain: Arc::new(predicate_plain),
            predicate_other: Arc::new(predicate_other),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }

    /// A matcher for one request.
    pub fn matcher(&self, spec: OutputSpec) -> SceneMatcher {
        let rules = Arc::new(SceneRules::new(spec));
        let mut state = rules.initial();
        if rules.spec.max_tokens.is_some_and(|m| m <= rules.finish_reserve()) {
            state.finish();
        }
        SceneMatcher { state, rules, factory: self.clone(), error: None, committed: 0 }
    }
}

/// The grammar state of one generation.
pub struct SceneMatcher {
    factory: GrammarFactory,
    rules: Arc<SceneRules>,
    state: State,
    error: Option<String>,
    /// Tokens committed so far.
    committed: u32,
}

impl SceneMatcher {
    fn check(&self) -> Result<()> {
        match &self.error {
            Some(e) => Err(Error::Grammar { reason: e.clone() }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, reason: String) -> Error {
        self.error.get_or_insert(reason.clone());
        Error::Grammar { reason }
    }

    /// True once the answer is complete (only end-of-turn tokens remain).
    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }

    /// The tokens allowed next.
    pub fn compute_mask(&mut self) -> Result<SimpleVob> {
        self.check()?;
        let trie = self.factory.env.tok_trie();
        let mut set = trie.alloc_token_set();
        if self.state.is_done() {
            self.factory.end_of_turn.iter().for_each(|&t| set.allow_token(t));
        } else if self.state.text_section().is_some() && !self.state.force_close && !self.state.finishing {
            // Free text: every token without '<' keeps the state; only the few with '<' need
            // walking (the general trie walk would visit nearly the whole vocabulary).
            set = (*self.factory.plain_text).clone();
            for &t in self.factory.with_lt.iter() {
                if self.accepts(trie.token(t)) {
                    set.allow_token(t);
                }
            }
        } else if let Some(room) = self.state.predicate_room(&self.rules.spec.bounds) {
            // Inside a predicate: tokens of predicate bytes that fit, plus the others walked.
            for &(t, n) in self.factory.predicate_plain.iter() {
                if n <= room {
                    set.allow_token(t);
                }
            }
            for &t in self.factory.predicate_other.iter() {
                if self.accepts(trie.token(t)) {
                    set.allow_token(t);
                }
            }
        } else {
            set = self.walk_mask();
        }
        if set.num_set() == 0 {
            let at = format!("{:?}", self.state.phase());
            return Err(self.fail(format!("no token can continue the output at {at}")));
        }
        Ok(set)
    }

    /// The allowed tokens by the general trie walk (what the free-text fast path must equal).
    pub fn walk_mask(&self) -> SimpleVob {
        let trie = self.factory.env.tok_trie();
        let mut set = trie.alloc_token_set();
        let mut rec = SceneRecognizer { rules: &self.rules, stack: vec![self.state.clone()] };
        trie.add_bias(&mut rec, &mut set, &[]);
        set
    }

    /// Whether `bytes` can follow the current state.
    fn accepts(&self, bytes: &[u8]) -> bool {
        let mut s = self.state.clone();
        for &b in bytes {
            match self.rules.step(&s, b) {
                Some(n) => s = n,
                None => return false,
            }
        }
        true
    }

    /// Advance by `token` (sampled or forced).
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.check()?;
        if self.state.is_done() {
            return if self.factory.end_of_turn.contains(&token) {
                Ok(())
            } else {
                Err(self.fail(format!("token {token} after the complete answer")))
            };
        }
        let bytes = self.factory.env.tok_trie().token(token).to_vec();
        let section = self.state.text_section();
        let mut s = self.state.clone();
        for &b in &bytes {
            s = match self.rules.step(&s, b) {
                Some(n) => n,
                None => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    return Err(self.fail(format!("token {token} ({text:?}) breaks the output rules")));
                }
            };
        }
        // A token that starts in a free-text section counts against its budget.
        if let (Some(sec), Some(now)) = (section, s.text_section())
            && sec == now
        {
            s.section_tokens += 1;
            let b = &self.rules.spec.bounds;
            let limit = match sec {
                Section::Observe => b.observe_tokens,
                Section::Think => b.think_tokens,
                Section::Answer => b.answer_tokens,
            };
            s.force_close = s.section_tokens >= limit;
        }
        self.committed += 1;
        if let Some(max) = self.rules.spec.max_tokens {
            s.finishing |= max.saturating_sub(self.committed) <= self.rules.finish_reserve();
        }
        self.state = s;
        Ok(())
    }

    /// Bytes the rules force next (each the only byte allowed), up to `max`.
    pub fn forced_bytes(&self, max: usize) -> Vec<u8> {
        forced_from(&self.rules, self.state.clone(), max).0
    }

    /// An upper bound on the tokens the shortest valid output takes from the start: the path of
    /// finishing mode (empty sections, no objects) with, at each choice (the option's letter, a free
    /// answer's first byte), the worst branch — its forced stretches tokenized canonically (as
    /// [`Self::forced_tokens`] appends them in finishing mode) and two tokens for the choice. A token
    /// limit below it cannot hold a valid answer; the engine refuses such a limit up front.
    pub fn min_tokens(&self) -> usize {
        let mut s = self.rules.initial();
        s.finish();
        self.worst_path_tokens(s, 0)
    }

    fn worst_path_tokens(&self, s: State, depth: usize) -> usize {
        let (bytes, s) = forced_from(&self.rules, s, 4096);
        let forced = if bytes.is_empty() { 0 } else { self.factory.env.tokenize_bytes(&bytes).len() };
        if s.is_done() || depth > 32 {
            return forced;
        }
        let worst =
            (0..=255u8).filter_map(|b| self.rules.step(&s, b)).map(|n| self.worst_path_tokens(n, depth + 1)).max();
        forced + worst.map_or(0, |w| 2 + w)
    }

    /// Tokens to append without sampling: the canonical tokenization of the forced bytes, minus its
    /// last token (which the model may extend) — all of it in finishing mode, where the shortest
    /// way to the end counts — or the single allowed token.
    pub fn forced_tokens(&mut self) -> Result<Vec<u32>> {
        self.check()?;
        let bytes = self.forced_bytes(256);
        let mut tokens = if bytes.is_empty() { Vec::new() } else { self.factory.env.tokenize_bytes(&bytes) };
        if !self.state.finishing {
            tokens.pop();
        }
        if tokens.is_empty() {
            let mask = self.compute_mask()?;
            if mask.num_set() == 1 {
                tokens.extend(mask.first_bit_set().map(|t| t as u32));
            }
        }
        Ok(tokens)
    }
}

/// The bytes forced from `s` (each the only byte allowed), up to `max`, and the state after them.
fn forced_from(rules: &SceneRules, mut s: State, max: usize) -> (Vec<u8>, State) {
    let mut out = Vec::new();
    while out.len() < max {
        let mut next = None;
        for b in 0..=255u8 {
            if let Some(n) = rules.step(&s, b) {
                if next.is_some() {
                    return (out, s);
                }
                next = Some((b, n));
            }
        }
        let Some((b, n)) = next else { break };
        out.push(b);
        s = n;
    }
    (out, s)
}

impl crate::decode::Stage for SceneMatcher {
    fn name(&self) -> &'static str {
        "scene_grammar"
    }

    fn apply(&mut self, logits: &mut [f32], _history: &[u32]) -> Result<()> {
        let mask = self.compute_mask()?;
        if logits.len() != self.factory.vocab_size() {
            return Err(self.fail(format!(
                "the logits have {} entries, the token trie {}",
                logits.len(),
                self.factory.vocab_size()
            )));
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<()> {
        self.commit(token)
    }

    fn forced(&mut self) -> Result<Vec<u32>> {
        self.forced_tokens()
    }
}

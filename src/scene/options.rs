//! Multiple-choice options offered by a question (`(A) behind (B) in front of`) and the choice
//! an answer makes (`(A) behind`).

use serde::{Deserialize, Serialize};

/// The chosen option: its letter when the answer starts with `(X)`, and the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub letter: Option<char>,
    pub text: String,
}

/// The options of a question, in order: (letter, text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionSet(pub Vec<(char, String)>);

/// Positions of `(X)` markers with X = 'A', 'B', … in sequence, each at the start of the text or
/// after whitespace.
fn markers(text: &str) -> Vec<(usize, char)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut want = b'A';
    for i in 0..b.len().saturating_sub(2) {
        let at_start = i == 0 || b[i - 1].is_ascii_whitespace() || b[i - 1] == b':';
        if at_start && b[i] == b'(' && b[i + 1] == want && b[i + 2] == b')' {
            out.push((i, want as char));
            if want == b'Z' {
                break;
            }
            want += 1;
        }
    }
    out
}

impl OptionSet {
    /// The options in `question`: a run of `(A) …`, `(B) …` markers. Fewer than two markers
    /// means the question offers no options.
    pub fn from_question(question: &str) -> Self {
        let m = markers(question);
        if m.len() < 2 {
            return Self::default();
        }
        let mut out = Vec::with_capacity(m.len());
        for (k, &(start, letter)) in m.iter().enumerate() {
            let end = m.get(k + 1).map_or(question.len(), |n| n.0);
            let text = question[start + 3..end].lines().next().unwrap_or_default();
            out.push((letter, text.trim().trim_end_matches([',', ';']).trim().to_string()));
        }
        Self(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The answer strings the model may write: `(A) text` for each option.
    pub fn answers(&self) -> Vec<String> {
        self.0.iter().map(|(l, t)| format!("({l}) {t}")).collect()
    }

    /// Whether `choice` names an offered option (letter offered; text, if any, that option's,
    /// compared case-insensitively).
    pub fn check(&self, choice: &Choice) -> Result<(), String> {
        let Some(letter) = choice.letter else {
            return Err(format!("the answer {:?} names no option letter", choice.text));
        };
        let Some((_, text)) = self.0.iter().find(|(l, _)| *l == letter) else {
            return Err(format!("option ({letter}) is not offered"));
        };
        if !choice.text.is_empty() && !choice.text.eq_ignore_ascii_case(text) {
            return Err(format!("option ({letter}) is {text:?}, the answer says {:?}", choice.text));
        }
        Ok(())
    }
}

/// Read an answer body: `(X) text`, `X) text` or free text.
pub fn parse_choice(answer: &str) -> Choice {
    let a = answer.trim();
    let b = a.as_bytes();
    let letter_at = |i: usize| b.get(i).filter(|c| c.is_ascii_uppercase()).map(|&c| c as char);
    let (letter, rest) = if b.first() == Some(&b'(') && b.get(2) == Some(&b')') {
        (letter_at(1), &a[3.min(a.len())..])
    } else if b.get(1) == Some(&b')') {
        (letter_at(0), &a[2.min(a.len())..])
    } else {
        (None, a)
    };
    match letter {
        Some(l) => Choice { letter: Some(l), text: rest.trim().to_string() },
        None => Choice { letter: None, text: a.to_string() },
    }
}

//! The output rules byte by byte (docs/FORMATS.md#the-response), in the style of llguidance's own tests: tables of
//! prefixes that must be accepted and that must be rejected, then the matcher over a real
//! tokenizer's trie (token budgets, forced tokens, sticky errors).

mod common;

use st::decode::grammar::{Bounds, GrammarFactory, OutputSpec, SceneRules};

fn rules(w: u32, h: u32, question: &str) -> SceneRules {
    SceneRules::new(OutputSpec::new((w, h), question, Bounds::default()))
}

/// How many bytes of `text` the rules accept from the start.
fn accepted(r: &SceneRules, text: &str) -> usize {
    let mut s = r.initial();
    for (i, &b) in text.as_bytes().iter().enumerate() {
        match r.step(&s, b) {
            Some(n) => s = n,
            None => return i,
        }
    }
    text.len()
}

const Q2: &str = "Where is the man? (A) behind the bike (B) in front of the bike";
const HEAD: &str = "<observe> a man </observe>\n<scene>\n{\"objects\": [";
const OBJ: &str = "{\"id\": \"bike.1\", \"bbox\": [0, 272, 310, 551]}";
const OBJ2: &str = "{\"id\": \"man.1\", \"bbox\": [0, 165, 38, 278]}";

fn full(objects: &str, rels: &str, answer: &str) -> String {
    format!(
        "{HEAD}{objects}], \"relationships\": [{rels}]}}\n</scene>\n<think> he is behind </think>\n<answer>{answer}</answer>"
    )
}

#[test]
fn whole_outputs_are_accepted_and_end_done() {
    let r = rules(640, 600, Q2);
    let rel = "{\"subject\": \"man.1\", \"predicate\": \"behind\", \"object\": \"bike.1\"}";
    for text in [
        full(&format!("{OBJ}, {OBJ2}"), rel, " (A) behind the bike "),
        full(OBJ, "", " (B) in front of the bike "),
        full("", "", " (A) behind the bike "),
        full(&format!("{OBJ}, {OBJ2}"), &format!("{rel}, {rel}"), " (B) in front of the bike "),
    ] {
        assert_eq!(accepted(&r, &text), text.len(), "{text}");
        let mut s = r.initial();
        for &b in text.as_bytes() {
            s = r.step(&s, b).unwrap();
        }
        assert!(s.is_done());
        // Nothing after the answer.
        assert!(r.step(&s, b'\n').is_none());
        // What the grammar accepts, the validator calls valid.
        let parsed = st::scene::parse_response(&text, &st::scene::Rules::new((640, 600), Q2));
        assert!(parsed.valid, "{:?}", parsed.reasons);
    }
    // Free-text answers when the question offers no options.
    let free = rules(640, 600, "What is behind the bike?");
    let text = full(OBJ, "", " a man ");
    assert_eq!(accepted(&free, &text), text.len());
    // ... but not an empty or blank one.
    for blank in ["", "  "] {
        let text = full(OBJ, "", blank);
        assert_eq!(accepted(&free, &text), text.len() - "</answer>".len(), "{blank:?}");
    }
}

#[test]
fn each_rule_rejects_at_the_first_bad_byte() {
    let r = rules(640, 600, Q2);
    // (text, the prefix that is still accepted)
    let cases: Vec<(String, String)> = vec![
        // Sections in order, closing tags exact, no '<' inside free text.
        ("<scene>".into(), "<".into()),
        ("<observe> a <b> </observe>".into(), "<observe> a <".into()),
        ("<observe> x </observe><scene>".into(), "<observe> x </observe>".into()),
        // Object keys exact; ids label.N; unique.
        (format!("{HEAD}{{\"name\": "), format!("{HEAD}{{\"")),
        (format!("{HEAD}{{\"id\": \"cup\", "), format!("{HEAD}{{\"id\": \"cup")),
        (format!("{HEAD}{{\"id\": \"1cup.1\""), format!("{HEAD}{{\"id\": \"")),
        (format!("{HEAD}{{\"id\": \"cup.\""), format!("{HEAD}{{\"id\": \"cup.")),
        (format!("{HEAD}{OBJ}, {{\"id\": \"bike.1\", "), format!("{HEAD}{OBJ}, {{\"id\": \"bike.1")),
        // Boxes: integers, no leading zeros, inside 640x600, x1 < x2, y1 < y2.
        (format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [640, "), format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [64")),
        (format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [01, "), format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [0")),
        (format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [-1, "), format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [")),
        (format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1.5, "), format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1")),
        (
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 10, "),
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 10"),
        ),
        (
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 9, "),
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 9"),
        ),
        (
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 11, 5]"),
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 11, 5"),
        ),
        (
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 641"),
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [10, 5, 64"),
        ),
        (
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1, 2, 3, 601]"),
            format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1, 2, 3, 60"),
        ),
        (format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1,2"), format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [1,")),
        // Relationships: none without objects; ends among the declared ids.
        (format!("{HEAD}], \"relationships\": [{{"), format!("{HEAD}], \"relationships\": [")),
        (
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \"man.1\""),
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \""),
        ),
        (
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \"bike.12\""),
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \"bike.1"),
        ),
        (
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \"bike.1\", \"predicate\": \"\""),
            format!("{HEAD}{OBJ}], \"relationships\": [{{\"subject\": \"bike.1\", \"predicate\": \""),
        ),
        // The answer is one of the options, exactly.
        (
            full("", "", " (C) x "),
            format!("{HEAD}], \"relationships\": []}}\n</scene>\n<think> he is behind </think>\n<answer> ("),
        ),
        (
            full("", "", " (A) in front of the bike "),
            format!("{HEAD}], \"relationships\": []}}\n</scene>\n<think> he is behind </think>\n<answer> (A) "),
        ),
        (
            full("", "", " (A) behind the bike"),
            format!(
                "{HEAD}], \"relationships\": []}}\n</scene>\n<think> he is behind </think>\n<answer> (A) behind the bike"
            ),
        ),
    ];
    for (text, ok) in cases {
        assert!(text.starts_with(&ok), "bad case: {ok:?} is not a prefix of {text:?}");
        assert_eq!(&text[..accepted(&r, &text)], ok, "{text:?}");
    }
}

#[test]
fn tiny_images_and_bounds() {
    // A 1×1 image allows exactly one box: [0, 0, 1, 1].
    let r = rules(1, 1, Q2);
    let obj = |b: &str| format!("{HEAD}{{\"id\": \"a.1\", \"bbox\": [{b}]}}");
    assert_eq!(accepted(&r, &obj("0, 0, 1, 1")), obj("0, 0, 1, 1").len());
    for bad in ["1, 0, 1, 1", "0, 0, 2, 1", "0, 0, 0, 1", "0, 0, 1, 0"] {
        assert!(accepted(&r, &obj(bad)) < obj(bad).len(), "{bad}");
    }
    // Object and relationship counts, label and predicate lengths are bounded.
    let bounds = Bounds {
        max_objects: 1,
        max_relationships: 1,
        max_label_bytes: 3,
        max_predicate_bytes: 4,
        ..Default::default()
    };
    let r = SceneRules::new(OutputSpec::new((640, 600), Q2, bounds));
    let one = format!("{HEAD}{{\"id\": \"abc.1\", \"bbox\": [0, 0, 5, 5]}}");
    assert_eq!(accepted(&r, &format!("{one}, ")), one.len());
    assert_eq!(accepted(&r, &format!("{HEAD}{{\"id\": \"abcd")), HEAD.len() + 11);
    let rel = format!(
        "{one}], \"relationships\": [{{\"subject\": \"abc.1\", \"predicate\": \"near\", \"object\": \"abc.1\"}}"
    );
    assert_eq!(accepted(&r, &rel), rel.len());
    assert_eq!(accepted(&r, &format!("{rel}, ")), rel.len());
    let long = format!("{one}], \"relationships\": [{{\"subject\": \"abc.1\", \"predicate\": \"nears");
    assert_eq!(accepted(&r, &long), long.len() - 1);
}

#[test]
fn the_matcher_counts_tokens_forces_bytes_and_keeps_errors() {
    let tok = common::model("tiny").join("tokenizer.json");
    let vocab = st::st_checkpoint::Checkpoint::open(common::model("tiny")).unwrap().config.text.vocab_size;
    let tokenizer = st::prompt::TextTokenizer::from_file(&tok).unwrap();
    let im_end = tokenizer.special.im_end;
    let f = GrammarFactory::from_tokenizer_file(&tok, vocab, vec![im_end]).unwrap();
    let bounds = Bounds { observe_tokens: 3, ..Default::default() };
    let mut m = f.matcher(OutputSpec::new((64, 48), Q2, bounds));
    // At the start everything up to the free text is forced.
    assert_eq!(m.forced_bytes(64), b"<observe>");
    let open = tokenizer.encode("<observe>").unwrap();
    let forced = m.forced_tokens().unwrap();
    assert!(!forced.is_empty() && open.starts_with(&forced), "{forced:?} vs {open:?}");
    for &t in &open {
        m.commit(t).unwrap();
    }
    let mask = m.compute_mask().unwrap();
    assert!(!mask.is_allowed(im_end), "no end of turn inside the output");
    // Three free-text tokens (without '<'), then only the closing tag.
    let words = tokenizer.encode(" the cat sat").unwrap();
    assert!(words.len() >= 3);
    let mut s = String::from_utf8(m.forced_bytes(64)).unwrap();
    for &t in &words[..3] {
        m.commit(t).unwrap();
    }
    s.clear();
    s.push_str(std::str::from_utf8(&m.forced_bytes(64)).unwrap());
    assert!(s.starts_with("</observe>\n<scene>\n{\"objects\": ["), "{s:?}");
    // The free-text fast path allows exactly what the general trie walk allows.
    let mut f2 = f.matcher(OutputSpec::new((64, 48), Q2, Bounds::default()));
    for t in tokenizer.encode("<observe> the cat</").unwrap() {
        f2.commit(t).unwrap();
        if f2.is_done() {
            break;
        }
        assert_eq!(f2.compute_mask().unwrap().to_list(), f2.walk_mask().to_list());
    }
    let mut f3 = f.matcher(OutputSpec::new((64, 48), Q2, Bounds { max_predicate_bytes: 6, ..Default::default() }));
    let head = "<observe> x </observe>\n<scene>\n{\"objects\": [{\"id\": \"a.1\", \"bbox\": [0, 0, 5, 5]}], \"relationships\": [{\"subject\": \"a.1\", \"predicate\": \"";
    for t in tokenizer.encode(head).unwrap() {
        f3.commit(t).unwrap();
    }
    for t in tokenizer.encode("near by").unwrap() {
        assert_eq!(f3.compute_mask().unwrap().to_list(), f3.walk_mask().to_list());
        if f3.commit(t).is_err() {
            break; // past the 6-byte budget
        }
    }
    // A token the rules refuse is an error, and errors are sticky.
    let bad = tokenizer.encode("x").unwrap()[0];
    let err = m.commit(bad).unwrap_err().to_string();
    assert!(err.contains("breaks the output rules"), "{err}");
    assert!(m.compute_mask().is_err() && m.commit(im_end).is_err());
    // The vocabulary size is checked against the logits.
    let mut m = f.matcher(OutputSpec::new((64, 48), Q2, Bounds::default()));
    let mut logits = vec![0.0f32; vocab + 1];
    assert!(st::decode::Stage::apply(&mut m, &mut logits, &[]).is_err());
}

#[test]
fn an_id_prefix_whose_every_completion_is_declared_is_refused() {
    // Found by st-run's defaults on the tiny model: with `x.28` and `x.280`–`x.289` declared (and at
    // most 3 digits), `x.28` has no continuation, so its `8` must be refused where it is written.
    let r = rules(640, 600, Q2);
    let obj = |id: &str| format!("{{\"id\": \"{id}\", \"bbox\": [0, 0, 5, 5]}}");
    let mut ids: Vec<String> = (0..10).map(|d| format!("x.28{d}")).collect();
    ids.push("x.28".into());
    let declared: Vec<String> = ids.iter().map(|id| obj(id)).collect();
    let prefix = format!("{HEAD}{}, {{\"id\": \"x.2", declared.join(", "));
    assert_eq!(accepted(&r, &prefix), prefix.len());
    assert_eq!(accepted(&r, &format!("{prefix}8")), prefix.len(), "x.28 has no completion left");
    assert_eq!(accepted(&r, &format!("{prefix}7\"")), prefix.len() + 2);
    assert_eq!(accepted(&r, &format!("{prefix}\"")), prefix.len() + 1);
    // One completion left (x.289 not declared): `8` is accepted, and then only `9`.
    let mut fewer = ids.clone();
    fewer.retain(|id| id != "x.289");
    let declared: Vec<String> = fewer.iter().map(|id| obj(id)).collect();
    let prefix = format!("{HEAD}{}, {{\"id\": \"x.28", declared.join(", "));
    assert_eq!(accepted(&r, &prefix), prefix.len());
    assert_eq!(accepted(&r, &format!("{prefix}\"")), prefix.len());
    assert_eq!(accepted(&r, &format!("{prefix}5")), prefix.len());
    assert_eq!(accepted(&r, &format!("{prefix}9\"")), prefix.len() + 2);
}

#[test]
fn every_accepted_prefix_has_a_completion_within_the_reserve() {
    // The byte-level promise behind "a generation whose tokens run out still ends valid": from any
    // prefix the rules accept, held to finishing mode, a complete output is at most
    // `finish_reserve` bytes away. Random walks over accepted bytes (half of them the smallest
    // accepted byte, which moves through the structure; half any accepted byte) on several
    // sizes, option sets and bounds; the fuzz target `grammar` does the same on arbitrary bytes.
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let small =
        Bounds { max_objects: 2, max_relationships: 2, max_label_bytes: 4, max_id_digits: 2, ..Bounds::default() };
    let cases = [
        (640, 600, Q2, Bounds::default()),
        (1, 1, "What is it?", small.clone()),
        (9, 3000, "Which? (A) a (B) bb (C) ccc (D) é (E) e (F) f (G) g (H) h", small),
    ];
    for (w, h, q, bounds) in cases {
        let r = SceneRules::new(OutputSpec::new((w, h), q, bounds));
        let reserve = r.finish_reserve() as usize;
        for walk in 0..12 {
            let mut s = r.initial();
            let mut written = Vec::new();
            for _ in 0..600 {
                let c = r.completion(&s, reserve, 1 << 20);
                assert!(
                    c.is_some(),
                    "{w}x{h} walk {walk}: no completion after {:?}",
                    String::from_utf8_lossy(&written)
                );
                let ok: Vec<u8> = (0..=255u8).filter(|&b| r.step(&s, b).is_some()).collect();
                let Some(&first) = ok.first() else { break };
                let b = if rng.random_bool(0.5) { first } else { ok[rng.random_range(0..ok.len())] };
                s = r.step(&s, b).unwrap();
                written.push(b);
            }
        }
    }
}

#[test]
fn a_free_answer_of_unicode_whitespace_cannot_close() {
    // Found by the 10,000-run property test: `<answer>\x0b</answer>` was accepted (Rust's
    // `is_ascii_whitespace` leaves out the vertical tab) while the validator, trimming Unicode
    // White_Space, calls it empty. The grammar now sees blanks as the validator does.
    let r = rules(640, 600, "What is next to the cat?");
    for blank in ["\x0b", " \t\x0c\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", " \u{2009} "] {
        let text = full(OBJ, "", blank);
        let close = text.rfind("</answer>").unwrap();
        assert_eq!(accepted(&r, &text), close, "{blank:?} is blank: `<` must be refused");
    }
    for visible in ["猫", "\u{3000}猫", "x", "\x01", "é "] {
        let text = full(OBJ, "", visible);
        assert_eq!(accepted(&r, &text), text.len(), "{visible:?}");
        let again = st::scene::parse_response(&text, &st::scene::Rules::new((640, 600), "What is next to the cat?"));
        assert!(again.valid, "{visible:?}: {:?}", again.reasons);
    }
    // Finishing: the answer's one visible byte is ASCII.
    let head =
        "<observe></observe>\n<scene>\n{\"objects\": [], \"relationships\": []}\n</scene>\n<think></think>\n<answer>";
    let mut s = r.initial();
    for &b in head.as_bytes() {
        s = r.step(&s, b).unwrap();
    }
    s.finish();
    assert!(r.step(&s, b'\x0b').is_none() && r.step(&s, 0xe7).is_none() && r.step(&s, b' ').is_none());
    let s = r.step(&s, b'y').unwrap();
    assert!(r.step(&s, b'e').is_none() && r.step(&s, b'<').is_some());
}

#[test]
fn an_option_of_any_length_can_be_chosen() {
    // Found by the `grammar` fuzz target: the chosen answer's bytes were held in a 96-byte buffer, so
    // an option longer than ~80 bytes (27 CJK characters) could never be completed.
    for text in ["a".repeat(200), "日本語のテキスト".repeat(12)] {
        let q = format!("Which? (A) short (B) {text}");
        let r = rules(64, 48, &q);
        let answer = format!(" (B) {text} ");
        let out = format!(
            "<observe></observe>\n<scene>\n{{\"objects\": [], \"relationships\": []}}\n</scene>\n<think></think>\n<answer>{answer}</answer>"
        );
        assert_eq!(accepted(&r, &out), out.len(), "{} bytes of option", text.len());
        let s = r.initial();
        assert!(r.completion(&s, r.finish_reserve() as usize, 1 << 22).is_some());
    }
}

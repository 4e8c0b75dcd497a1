//! Mask computation per token with the real Qwen2.5-VL vocabulary (152,064 logits; fetched by
//! `make qwen-tokenizer`) at several points of the output: inside free text (the trie walk
//! visits almost every token), inside a bbox number, inside an id, and at the relationship
//! choice. Compare with one decode step of the 7B-shaped int4 model (docs/PERFORMANCE.md).

use criterion::{Criterion, criterion_group, criterion_main};
use st::decode::grammar::{Bounds, GrammarFactory, OutputSpec};
use st::prompt::TextTokenizer;
use std::path::Path;

const QUESTION: &str = "Where is the man? (A) behind the bike (B) in front of the bike";
const VOCAB: usize = 152_064;

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/qwen2.5-vl-tokenizer/tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&path).expect("run `make qwen-tokenizer` first");
    let t = std::time::Instant::now();
    let factory = GrammarFactory::from_tokenizer_file(&path, VOCAB, vec![tokenizer.special.im_end]).expect("trie");
    eprintln!("token trie of {} entries built in {:.0} ms", factory.vocab_size(), t.elapsed().as_secs_f64() * 1e3);
    let points = [
        ("free_text", "<observe> A man stands behind a red bike on the"),
        ("bbox_number", "<observe> a man </observe>\n<scene>\n{\"objects\": [{\"id\": \"bike.1\", \"bbox\": [12"),
        ("id_label", "<observe> a man </observe>\n<scene>\n{\"objects\": [{\"id\": \"bi"),
        (
            "predicate",
            "<observe> a man </observe>\n<scene>\n{\"objects\": [{\"id\": \"bike.1\", \"bbox\": [0, 272, 310, 551]}], \"relationships\": [{\"subject\": \"bike.1\", \"predicate\": \"left",
        ),
        (
            "relationship_choice",
            "<observe> a man </observe>\n<scene>\n{\"objects\": [{\"id\": \"bike.1\", \"bbox\": [0, 272, 310, 551]}], \"relationships\": [",
        ),
    ];
    for (name, prefix) in points {
        let mut m = factory.matcher(OutputSpec::new((640, 600), QUESTION, Bounds::default()));
        for id in tokenizer.encode(prefix).expect("encode") {
            m.commit(id).expect("the prefix follows the rules");
        }
        let allowed = m.compute_mask().expect("mask").num_set();
        assert_eq!(m.compute_mask().expect("mask").to_list(), m.walk_mask().to_list(), "{name}: fast path");
        eprintln!("{name}: {allowed} tokens allowed");
        c.bench_function(&format!("grammar_mask_qwen_{name}"), |b| b.iter(|| m.compute_mask().expect("mask")));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

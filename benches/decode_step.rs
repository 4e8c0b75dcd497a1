//! One decoder pass on the tiny model (exported fp32, GroupQueryAttention, IoBinding cache):
//! one token, four tokens in one pass, and a frame's second question (prefill of the question
//! only). The tiny model measures the runtime's own overhead per step (ORT dispatch, embedding,
//! M-RoPE tables, sampling), not weight bandwidth; `st bench` and examples/decoder_step time the
//! 7B shape. Needs the ORT library (`make venv`).

use criterion::{Criterion, criterion_group, criterion_main};
use st::engine::{Engine, GenerateOptions, SessionOptions};
use std::path::Path;

const QUESTION: &str = "Is the cat to the left of the table? (A) yes (B) no";

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("temp dir");
    let dir = out.path().join("tiny-b");
    st_export::export(&root.join("tests/fixtures/models/tiny-b"), &dir, &Default::default()).expect("export");
    let mut e = Engine::load(&dir, &SessionOptions { threads: Some(1), ..Default::default() }).expect("load");
    let frame = e.encode_image(&root.join("tests/fixtures/images/chelsea.png")).expect("frame");
    let one = GenerateOptions { max_new_tokens: Some(1), grammar: false, ..Default::default() };
    let a = e.ask(&frame, QUESTION, &one).expect("ask");
    let prompt = e.cached_tokens();
    let delta = {
        let merge = e.preprocessor.geometry.merge_size;
        let (w, h) = frame.image.original_size;
        let text = e.prompt.spatialthinker_prompt(w, h, QUESTION).expect("prompt");
        let ids = e.prompt.encode(&text, &[frame.image.num_image_tokens(merge)]).expect("ids");
        st::rope::mrope_positions(&ids, e.prompt.tokenizer.special.image_pad, &[frame.image.grid_thw], merge)
            .expect("positions")
            .delta
    };
    let t = a.token_ids[0];
    c.bench_function("decode_step_tiny_b_1_token", |b| {
        b.iter(|| {
            e.rewind(prompt);
            e.forward_tokens(&[t], delta, 1).expect("step")
        })
    });
    c.bench_function("decode_step_tiny_b_4_tokens_one_pass", |b| {
        b.iter(|| {
            e.rewind(prompt);
            e.forward_tokens(&[t; 4], delta, 4).expect("step")
        })
    });
    c.bench_function("second_question_ttft_tiny_b", |b| b.iter(|| e.ask(&frame, QUESTION, &one).expect("ask")));
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The library path end to end: an exported model loaded by `Engine`, a frame encoded from an
//! image file, generation — the transformers golden tokens for both tiny shapes and both
//! attention forms; a frame's prefix reused across questions with the same tokens as a fresh
//! prefill; several tokens per decoder pass; streaming; seeded sampling; engines cloned across
//! threads; an on-demand vision session. Bad input gives errors and the engine keeps working.

mod common;

use common::{QUESTION, golden, image, model, read_npy};
use st::engine::{Engine, GenerateOptions, SessionOptions, StopReason, VisionSession};
use std::ops::ControlFlow;

fn engine(name: &str, attention: st_export::Attention, out: &std::path::Path) -> Engine {
    let dir = out.join(name);
    let opts = st_export::ExportOptions { attention, ..Default::default() };
    st_export::export(&model(name), &dir, &opts).unwrap();
    let mut e = Engine::load(&dir, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    e.preprocessor.options.pixels.max_pixels = 37632; // the goldens' image budget
    e
}

/// Greedy and unconstrained, as transformers' `generate` (the grammar has its own tests).
fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens: Some(n), grammar: false, ..Default::default() }
}

/// st's GroupQueryAttention (the CPU default), ORT's, and the plain ONNX form.
const ATTENTION: [st_export::Attention; 3] =
    [st_export::Attention::StGroupQuery, st_export::Attention::GroupQuery, st_export::Attention::Standard];

#[test]
fn greedy_generation_reproduces_transformers() {
    for name in ["tiny", "tiny-b"] {
        for attention in ATTENTION {
            let tmp = tempfile::tempdir().unwrap();
            let mut e = engine(name, attention, tmp.path());
            let frame = e.encode_image(&image("chelsea.png")).unwrap();
            let want: ndarray::Array1<i64> = read_npy(&golden(&format!("{name}/greedy_tokens.npy")));
            let ids: ndarray::Array2<i64> = read_npy(&golden(&format!("{name}/input_ids.npy")));
            // Fresh: the whole prompt prefilled, as transformers does.
            let fresh = GenerateOptions { reuse_prefix: false, ..greedy(want.len()) };
            let out = e.ask(&frame, QUESTION, &fresh).unwrap();
            assert_eq!(out.prompt_tokens, ids.len(), "{name}");
            assert_eq!(out.reused_prompt_tokens, 0);
            let got: Vec<i64> = out.token_ids.iter().map(|&t| t as i64).collect();
            assert_eq!(got, want.to_vec(), "{name} {attention:?}");
            // The same question on the reused frame prefix: the same tokens.
            let again = e.ask(&frame, QUESTION, &greedy(want.len())).unwrap();
            assert!(again.reused_prompt_tokens > frame.timings.prefix_tokens / 2, "{name} {attention:?}");
            assert_eq!(again.token_ids, out.token_ids, "{name} {attention:?} reused prefix");
        }
    }
}

#[test]
fn a_second_question_on_a_frame_matches_asking_it_fresh() {
    for attention in ATTENTION {
        let tmp = tempfile::tempdir().unwrap();
        let mut e = engine("tiny", attention, tmp.path());
        let cat = e.encode_image(&image("chelsea.png")).unwrap();
        let other = e.encode_image(&image("astronaut.png")).unwrap();
        let questions = ["Is the cat left of the table? (A) yes (B) no", "How many cats are there?", " leading space?"];
        let mut fresh = Vec::new();
        for q in questions {
            let o = GenerateOptions { reuse_prefix: false, ..greedy(12) };
            fresh.push((e.ask(&cat, q, &o).unwrap().token_ids, e.ask(&other, q, &o).unwrap().token_ids));
        }
        // Interleave frames so the cache changes hands between questions.
        for (q, (want_cat, want_other)) in questions.iter().zip(&fresh) {
            let a = e.ask(&cat, q, &greedy(12)).unwrap();
            assert!(a.reused_prompt_tokens > 0 && a.reused_prompt_tokens <= cat.timings.prefix_tokens);
            assert_eq!(&a.token_ids, want_cat, "{attention:?} {q:?}");
            let b = e.ask(&other, q, &greedy(12)).unwrap();
            assert_eq!(&b.token_ids, want_other, "{attention:?} {q:?}");
            assert!(a.prompt_tokens - a.reused_prompt_tokens < 40, "only the question's tokens are prefilled");
        }
    }
}

#[test]
fn several_tokens_in_one_pass_match_one_at_a_time() {
    for attention in ATTENTION {
        let tmp = tempfile::tempdir().unwrap();
        let mut e = engine("tiny-b", attention, tmp.path());
        let frame = e.encode_image(&image("chelsea.png")).unwrap();
        let a = e.ask(&frame, QUESTION, &greedy(6)).unwrap();
        let delta = frame_delta(&e, &frame);
        let tokens = &a.token_ids[..4];
        let mut steps = Vec::new();
        // Asking for one token leaves the cache holding exactly the prompt.
        e.ask(&frame, QUESTION, &greedy(1)).unwrap();
        for &t in tokens {
            steps.push(e.forward_tokens(&[t], delta, 1).unwrap().row(0).to_owned());
        }
        e.ask(&frame, QUESTION, &greedy(1)).unwrap();
        let batch = e.forward_tokens(tokens, delta, tokens.len()).unwrap();
        for (i, single) in steps.iter().enumerate() {
            let diff = (&batch.row(i) - single).iter().fold(0f32, |m, d| m.max(d.abs()));
            let scale = single.iter().fold(0f32, |m, d| m.max(d.abs()));
            // Same math, different GEMM shapes: f32 reassociation only.
            assert!(diff <= 1e-4 * scale.max(1.0), "{attention:?} token {i}: {diff} (scale {scale})");
        }
    }
}

/// M-RoPE offset of text positions after the prompt (max position + 1 − prompt length).
fn frame_delta(e: &Engine, frame: &st::engine::Frame) -> i64 {
    let merge = e.preprocessor.geometry.merge_size;
    let (w, h) = frame.image.original_size;
    let text = e.prompt.spatialthinker_prompt(w, h, QUESTION).unwrap();
    let ids = e.prompt.encode(&text, &[frame.image.num_image_tokens(merge)]).unwrap();
    st::rope::mrope_positions(&ids, e.prompt.tokenizer.special.image_pad, &[frame.image.grid_thw], merge).unwrap().delta
}

#[test]
fn streaming_sampling_and_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    // Streamed pieces add up to the decoded text; Break stops after that token.
    let mut pieces = String::new();
    let mut n = 0;
    let a = e
        .ask_streaming(&frame, QUESTION, &greedy(10), |t| {
            pieces.push_str(t.text);
            n += 1;
            if n == 7 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
    assert_eq!(a.stop, StopReason::Callback);
    assert_eq!(a.token_ids.len(), 7);
    assert!(a.raw.starts_with(&pieces) && a.raw.len() - pieces.len() <= 4, "{pieces:?} vs {:?}", a.raw);
    // Seeded sampling: reproducible, and different from greedy.
    let sample = |seed| GenerateOptions {
        sampling: st::decode::SamplingParams { temperature: Some(1.5), seed, ..Default::default() },
        ..greedy(16)
    };
    let s1 = e.ask(&frame, QUESTION, &sample(1)).unwrap().token_ids;
    assert_eq!(s1, e.ask(&frame, QUESTION, &sample(1)).unwrap().token_ids);
    assert_ne!(s1, e.ask(&frame, QUESTION, &sample(2)).unwrap().token_ids);
    // Clones share the sessions and run on other threads with their own caches.
    let want = e.ask(&frame, QUESTION, &greedy(8)).unwrap().token_ids;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (mut e, frame) = (e.clone(), frame.clone());
            std::thread::spawn(move || e.ask(&frame, QUESTION, &greedy(8)).unwrap().token_ids)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn bad_input_is_an_error_and_the_engine_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let junk = tmp.path().join("junk.jpg");
    std::fs::write(&junk, b"not an image").unwrap();
    let err = e.encode_image(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.jpg"), "{err}");
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    let err = e.ask(&frame, "  ", &greedy(4)).unwrap_err().to_string();
    assert!(err.contains("question"), "{err}");
    let long = "why? ".repeat(5000);
    let err = e.ask(&frame, &long, &greedy(4)).unwrap_err().to_string();
    assert!(err.contains("question") && err.contains("limit"), "{err}");
    let err = e.ask(&frame, QUESTION, &greedy(1_000_000)).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    let bad =
        GenerateOptions { sampling: st::decode::SamplingParams { top_p: 2.0, ..Default::default() }, ..greedy(4) };
    assert!(e.ask(&frame, QUESTION, &bad).unwrap_err().to_string().contains("top_p"));
    assert_eq!(e.ask(&frame, QUESTION, &greedy(3)).unwrap().token_ids.len(), 3);
}

#[test]
fn bad_model_directories_and_devices_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    st_export::export(&model("tiny"), &dir, &Default::default()).unwrap();
    // This machine's ONNX Runtime is the CPU build: CUDA is an error naming the missing
    // provider library, or a logged fallback to CPU when allowed.
    let cuda = SessionOptions { device: "cuda".parse().unwrap(), ..Default::default() };
    let err = Engine::load(&dir, &cuda).err().unwrap().to_string();
    assert!(err.contains("libonnxruntime_providers_cuda.so") && err.contains("onnxruntime-gpu"), "{err}");
    let trt = SessionOptions { device: "tensorrt:0".parse().unwrap(), ..Default::default() };
    let err = Engine::load(&dir, &trt).err().unwrap().to_string();
    assert!(err.contains("libonnxruntime_providers_tensorrt.so"), "{err}");
    let fallback = SessionOptions { cpu_fallback: true, ..cuda };
    let e = Engine::load(&dir, &fallback).unwrap();
    assert_eq!(e.model().device, st::engine::Device::Cpu);
    assert!("gpu".parse::<st::engine::Device>().unwrap_err().to_string().contains("cpu, cuda"));

    std::fs::remove_file(dir.join("vision.onnx")).unwrap();
    let err = Engine::load(&dir, &SessionOptions::default()).err().unwrap().to_string();
    assert!(err.contains("vision.onnx"), "{err}");
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let err = Engine::load(&dir, &SessionOptions::default()).err().unwrap().to_string();
    assert!(err.contains("format_version") && err.contains("re-export"), "{err}");
}

#[test]
fn exact_speculation_gives_the_same_tokens() {
    // Prompt-lookup drafts ride in each decoder pass and are kept only as far as the sampler picks
    // them itself: the tokens equal one-at-a-time decoding, greedy and seeded, with the grammar
    // and without, on both tiny fixtures and both attention forms. 96 tokens of a random model
    // repeat themselves enough that drafts are fed and some kept.
    let questions =
        ["Is the cat left of the table? (A) yes (B) no", "What is on the table? (A) a cup (B) a cat (C) nothing"];
    let (mut drafted, mut kept) = (0, 0);
    for name in ["tiny", "tiny-b"] {
        for attention in ATTENTION {
            let tmp = tempfile::tempdir().unwrap();
            let mut e = engine(name, attention, tmp.path());
            let frame = e.encode_image(&image("chelsea.png")).unwrap();
            for q in questions {
                for grammar in [false, true] {
                    for seed in [None, Some(7)] {
                        let sampling = st::decode::SamplingParams {
                            temperature: seed.map(|_| 1.0),
                            seed: seed.unwrap_or(0),
                            ..Default::default()
                        };
                        let plain = GenerateOptions { grammar, sampling, ..greedy(96) };
                        let want = e.ask(&frame, q, &plain).unwrap();
                        let spec = e.ask(&frame, q, &GenerateOptions { speculate: 6, ..plain.clone() }).unwrap();
                        let what = format!("{name} {attention:?} grammar {grammar} seed {seed:?} {q:?}");
                        assert_eq!(spec.token_ids, want.token_ids, "{what}");
                        assert_eq!(spec.stop, want.stop, "{what}");
                        assert_eq!(want.timings.draft_tokens, 0);
                        assert!(spec.timings.accepted_draft_tokens <= spec.timings.draft_tokens);
                        drafted += spec.timings.draft_tokens;
                        kept += spec.timings.accepted_draft_tokens;
                        // Kept drafts save decoder passes; rejected ones never add any.
                        let passes = |a: &st::engine::Answer| a.timings.decode_ms.len();
                        assert!(passes(&spec) <= passes(&want), "{what}");
                    }
                }
            }
        }
    }
    assert!(drafted > 0 && kept > 0, "drafts fed {drafted}, kept {kept}");
}

#[test]
fn a_token_limit_below_the_shortest_valid_answer_is_refused_and_the_bound_suffices() {
    // Found by the 10,000-run property test: 64 tokens could not hold even the shortest answer to
    // a question with long non-ASCII options in the tiny tokenizer, and the output was cut off before
    // `</answer>`. Now such a limit is refused up front, and the bound itself always suffices.
    use st::decode::grammar::{Bounds, OutputSpec};
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    let q = "Which is closest to the camera? (A) 🙂 the smiling one (B) 日本語のテキスト (C) 0";
    let bounds = Bounds::default();
    let need = |max: usize| {
        let spec = OutputSpec::budgeted(frame.image.original_size, q, &bounds, max);
        e.grammar_factory().unwrap().matcher(spec).min_tokens()
    };
    let n = need(64);
    assert!(n > 40 && n < 200, "{n}");
    let opts = |max: usize, seed: u64| GenerateOptions {
        max_new_tokens: Some(max),
        sampling: st::decode::SamplingParams { temperature: Some(1.5), seed, ..Default::default() },
        ..Default::default()
    };
    let err = e.ask(&frame, q, &opts(n - 1, 0)).unwrap_err().to_string();
    assert!(err.contains("max_new_tokens") && err.contains(&format!("({n} tokens")), "{err}");
    for seed in 0..24 {
        let a = e.ask(&frame, q, &opts(n, seed)).unwrap();
        assert!(a.response.valid, "seed {seed}: {:?}\n{}", a.response.reasons, a.raw);
        assert!(a.token_ids.len() <= n);
    }
    // The engine keeps working after the refusal.
    assert!(e.ask(&frame, q, &opts(400, 1)).unwrap().response.valid);
}

#[test]
fn the_default_token_budget_fits_the_context() {
    // No budget given: what the context leaves (tiny-b's context of 2048 is less than its prompt plus
    // the default budget of 2048), so the defaults always run.
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny-b", st_export::Attention::GroupQuery, tmp.path());
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    let context = e.model().manifest.config.text.max_position_embeddings;
    let unbounded = GenerateOptions { grammar: false, ignore_eos: true, max_new_tokens: None, ..Default::default() };
    let mut n = 0;
    let out = e
        .ask_streaming(&frame, QUESTION, &unbounded, |_| {
            n += 1;
            if n == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
    assert!(out.prompt_tokens + st::engine::DEFAULT_MAX_NEW_TOKENS > context, "the check needs a small context");
    assert_eq!(out.token_ids.len(), 4);
    // An explicit budget that does not fit is still an error.
    let explicit = GenerateOptions { max_new_tokens: Some(st::engine::DEFAULT_MAX_NEW_TOKENS), ..unbounded };
    assert!(e.ask(&frame, QUESTION, &explicit).unwrap_err().to_string().contains("exceed the model's context"));

    use st::engine::{DEFAULT_MAX_NEW_TOKENS, new_token_budget};
    assert_eq!(new_token_budget(None, 328, 2048).unwrap(), 2048 - 328);
    assert_eq!(new_token_budget(None, 10, 1 << 20).unwrap(), DEFAULT_MAX_NEW_TOKENS);
    assert_eq!(new_token_budget(Some(100), 328, 2048).unwrap(), 100);
    assert_eq!(new_token_budget(Some(1720), 328, 2048).unwrap(), 1720);
    let err = new_token_budget(Some(1721), 328, 2048).unwrap_err().to_string();
    assert!(err.contains("328 prompt tokens + 1721 new exceed the model's context of 2048"), "{err}");
    assert!(new_token_budget(Some(0), 3, 2048).unwrap_err().to_string().contains("at least 1"));
    let err = new_token_budget(None, 2048, 2048).unwrap_err().to_string();
    assert!(err.contains("no room") && err.contains("2048"), "{err}");
}

/// Eight engine clones sharing one loaded model ask at once, each a different sampled question: every
/// answer equals the single-threaded one for the same seed, and is valid under the grammar. The short
/// form runs one round per thread; `ST_THREAD_ROUNDS=N` runs N (the long form, docs/RELIABILITY.md).
#[test]
fn eight_threads_sharing_one_model_answer_as_one_thread_does() {
    let rounds: u64 = std::env::var("ST_THREAD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let frames = [e.encode_image(&image("chelsea.png")).unwrap(), e.encode_image(&image("astronaut.png")).unwrap()];
    const QUESTIONS: [&str; 2] = [QUESTION, "Where is the astronaut? (A) left (B) right (C) center"];
    let opts = |seed: u64| GenerateOptions {
        max_new_tokens: Some(96),
        sampling: st::decode::SamplingParams { temperature: Some(1.0), top_p: 0.9, seed, ..Default::default() },
        ..Default::default()
    };
    let job = |seed: u64| ((seed % 2) as usize, QUESTIONS[(seed / 2 % 2) as usize]);
    let want: Vec<Vec<u32>> = (0..16)
        .map(|seed| {
            let (f, q) = job(seed);
            e.ask(&frames[f], q, &opts(seed)).unwrap().token_ids
        })
        .collect();
    let want = std::sync::Arc::new(want);
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (mut e, frames, want) = (e.clone(), frames.clone(), want.clone());
            std::thread::spawn(move || {
                for round in 0..rounds {
                    for seed in [(t + round) % 16, (t + 8 + round) % 16] {
                        let (f, q) = job(seed);
                        let a = e.ask(&frames[f], q, &opts(seed)).unwrap();
                        assert!(a.response.valid, "thread {t} seed {seed}: {:?}", a.response.reasons);
                        assert_eq!(a.token_ids, want[seed as usize], "thread {t} round {round} seed {seed}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// An export whose files were damaged or mixed up: a clear error naming the file, quickly.
#[test]
fn damaged_exports_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    st_export::export(&model("tiny"), &a, &Default::default()).unwrap();
    st_export::export(&model("tiny-b"), &b, &Default::default()).unwrap();
    let load = |dir: &std::path::Path| {
        let t = std::time::Instant::now();
        let err = Engine::load(dir, &SessionOptions::default()).err().map(|e| e.to_string());
        (err, t.elapsed())
    };
    // A truncated external-data file.
    let data = a.join("decoder.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (err, took) = load(&a);
    // ONNX Runtime checks each external initializer against the data file's length (pinned 1.31.1):
    // the error names the graph, the tensor and the bounds.
    let err = err.expect("a truncated decoder.onnx.data must not load");
    assert!(err.contains("decoder.onnx") && err.contains("weight") && err.contains("out of bounds"), "{err}");
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    // A graph from another export (tiny-b's decoder in tiny's directory).
    std::fs::remove_dir_all(&a).unwrap();
    st_export::export(&model("tiny"), &a, &Default::default()).unwrap();
    for f in ["decoder.onnx", "decoder.onnx.data"] {
        std::fs::copy(b.join(f), a.join(f)).unwrap();
    }
    let (err, _) = load(&a);
    let err = err.expect("another export's decoder must not load");
    assert!(err.contains("decoder"), "{err}");
    // A truncated graph file (the protobuf itself, at several lengths), and an empty one.
    for graph in ["decoder.onnx", "vision.onnx", "embed.onnx"] {
        for part in [2u64, 1, 0] {
            std::fs::remove_dir_all(&a).unwrap();
            st_export::export(&model("tiny"), &a, &Default::default()).unwrap();
            let len = std::fs::metadata(a.join(graph)).unwrap().len();
            let cut = [0, len - 1, len / 2][part as usize];
            let f = std::fs::OpenOptions::new().write(true).open(a.join(graph)).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let (err, took) = load(&a);
            let err = err.unwrap_or_else(|| panic!("{graph} cut to {cut} of {len} bytes must not load"));
            assert!(err.contains(graph), "{graph} at {cut}: {err}");
            assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        }
    }
    // An int4 export's truncated data file, whose tiles st reads itself (to lend them to ORT from huge pages)
    // where the kernel offers them: named either way, by st or (no huge pages) by ORT.
    std::fs::remove_dir_all(&a).unwrap();
    st_export::export(&model("tiny"), &a, &st_export::ExportOptions::new(st_export::Precision::Int4)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.set_len(std::fs::metadata(&data).unwrap().len() / 8).unwrap();
    drop(f);
    let err = load(&a).0.expect("a truncated int4 decoder.onnx.data must not load");
    eprintln!("truncated int4 data: {err}");
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[always]") || thp.contains("[madvise]") {
        // st's own check, before any read: the file, the tensor, the bounds.
        assert!(
            err.contains("decoder.onnx.data") && err.contains("past the file's end") && err.contains("weight"),
            "{err}"
        );
    } else {
        assert!(err.contains("decoder.onnx") && err.contains("out of bounds"), "{err}");
    }
}

#[test]
fn chat_messages_through_the_template_answer_as_ask_does() {
    // ask's tokens are checked against transformers above; the same conversation given as
    // messages must render, encode and generate identically.
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let frame = e.encode_image(&image("chelsea.png")).unwrap();
    let want = e.ask(&frame, QUESTION, &greedy(24)).unwrap();
    let (w, h) = frame.image.original_size;
    let text = st::prompt::spatialthinker_text(w, h, QUESTION).unwrap();
    let messages = [st::prompt::Message::user(vec![st::prompt::Content::Image, st::prompt::Content::Text(text)])];
    let got = e.chat_streaming(Some(&frame), &messages, &greedy(24), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!((got.token_ids, got.prompt_tokens), (want.token_ids, want.prompt_tokens));
    // Text only: no frame, a prompt without vision tokens.
    let hello = [st::prompt::Message::user(vec![st::prompt::Content::Text("Say hello.".into())])];
    let a = e.chat_streaming(None, &hello, &greedy(6), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!((a.token_ids.len(), a.reused_prompt_tokens), (6, 0));
    let b = e.chat_streaming(None, &hello, &greedy(6), |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    // Image parts and frames must agree; the grammar needs ask.
    assert!(e.chat_streaming(None, &messages, &greedy(6), |_| ControlFlow::Continue(())).is_err());
    assert!(e.chat_streaming(Some(&frame), &hello, &greedy(6), |_| ControlFlow::Continue(())).is_err());
    let long = [st::prompt::Message::user(vec![st::prompt::Content::Text("x".repeat(70_000))])];
    let e2 = e.chat_streaming(None, &long, &greedy(6), |_| ControlFlow::Continue(())).unwrap_err();
    assert!(e2.to_string().contains("messages"), "{e2}");
    let constrained = GenerateOptions { grammar: true, ..greedy(6) };
    assert!(e.chat_streaming(None, &hello, &constrained, |_| ControlFlow::Continue(())).is_err());
}

#[test]
fn an_on_demand_vision_session_answers_as_a_resident_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut resident = engine("tiny", st_export::Attention::GroupQuery, tmp.path());
    let dir = tmp.path().join("tiny");
    let opts = SessionOptions { threads: Some(1), vision: VisionSession::OnDemand, ..Default::default() };
    let mut on_demand = Engine::load(&dir, &opts).unwrap();
    on_demand.preprocessor.options.pixels.max_pixels = 37632;
    assert!(resident.model().vision.is_resident() && !on_demand.model().vision.is_resident());
    let want_frame = resident.encode_image(&image("chelsea.png")).unwrap();
    let want = resident.ask(&want_frame, QUESTION, &greedy(12)).unwrap();
    // Two frames: the session is opened, released, and opened again.
    for _ in 0..2 {
        let frame = on_demand.encode_image(&image("chelsea.png")).unwrap();
        assert_eq!(frame.embeds, want_frame.embeds, "the same vision graph, the same embeddings bit for bit");
        assert_eq!(on_demand.ask(&frame, QUESTION, &greedy(12)).unwrap().token_ids, want.token_ids);
    }
    // A damaged vision graph is named at load, not at the first frame.
    std::fs::write(dir.join("vision.onnx"), b"not a graph").unwrap();
    let err = Engine::load(&dir, &opts).err().expect("a damaged vision.onnx must not load").to_string();
    assert!(err.contains("vision.onnx"), "{err}");
}

/// The files of ORT's profile written under `prefix` for `graph`, whether any records a Cast node, and
/// the session's runs.
fn profiled_casts(dir: &std::path::Path, graph: &str) -> (usize, bool, usize) {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("prof-{graph}_")))
        .collect();
    let events: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| serde_json::from_slice::<Vec<serde_json::Value>>(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    let casts = events.iter().any(|e| e["cat"] == "Node" && e["args"]["op_name"] == "Cast");
    let runs = events.iter().filter(|e| e["cat"] == "Session" && e["name"] == "model_run").count();
    (files.len(), casts, runs)
}

#[test]
fn fp16_vision_weights_as_exported_encode_as_widened_ones_do() {
    use st::engine::VisionWeights;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-fp16-vision");
    let opts = st_export::ExportOptions { vision: st_export::Precision::Fp16, ..Default::default() };
    st_export::export(&model("tiny"), &dir, &opts).unwrap();
    let want: ndarray::Array2<f32> = read_npy(&golden("tiny/vision_embeds.npy"));
    let mut embeds = vec![];
    for (mode, tag) in [(VisionWeights::AsExported, "as-exported"), (VisionWeights::Widened, "widened")] {
        let prof = tmp.path().join(tag);
        std::fs::create_dir(&prof).unwrap();
        let session = SessionOptions {
            threads: Some(1),
            vision_weights: mode,
            profile: Some(prof.join("prof")),
            ..Default::default()
        };
        let mut e = Engine::load(&dir, &session).unwrap();
        e.preprocessor.options.pixels.max_pixels = 37632;
        let frame = e.encode_image(&image("chelsea.png")).unwrap();
        // fp16 weights against transformers' f32 model: the fp16 storage bound of tests/export_fp32.rs.
        let err = common::pipeline::rel_err(&frame.embeds, &want);
        eprintln!("{tag}: vision max|Δ|/max|ref| = {err:.2e}");
        assert!(err <= 1e-2, "{tag}: vision max|Δ|/max|ref| = {err}");
        embeds.push(frame.embeds.clone());
        drop(e); // ORT writes the profile when the session is released
        // The weights really are kept as exported: ORT runs the Cast nodes per call only then.
        let (files, casts, runs) = profiled_casts(&prof, "vision");
        assert_eq!(files, 1, "{tag}: one vision profile");
        assert_eq!(casts, mode == VisionWeights::AsExported, "{tag}: Cast nodes run per call");
        // Kept as exported, the tower is warmed up at load by one tiny frame (the weights faulted in).
        assert_eq!(runs, if mode == VisionWeights::AsExported { 2 } else { 1 }, "{tag}: vision runs");
    }
    // The same f32 weight values either way; only the summation order can differ (MLAS packs a weight
    // at load or per call, and with constant folding off ORT fuses a little differently), so the two
    // agree to f32 rounding over the tower's depth: far inside the fp16 storage error above.
    let diff = common::pipeline::rel_err(&embeds[0], &embeds[1]);
    eprintln!("as exported against widened: max|Δ|/max = {diff:.2e}");
    assert!(diff <= 1e-5, "as exported against widened: {diff}");
}

/// The int4 decoder's weights, which st's operators read in place, lent to ORT from st's own copy on huge
/// pages (`--huge-pages on`, the default) give the logits that ORT's own reading of the weight file gives,
/// bit for bit: the same bytes through the same kernels (a tensor lent from the wrong offset or with the
/// wrong type changes them). Where the kernel offers transparent huge pages the copy is in use; off, nothing
/// is lent.
#[test]
fn int4_weights_lent_from_huge_pages_give_the_files_logits() {
    use st::engine::HugePages;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    st_export::export(&model("tiny"), &dir, &st_export::ExportOptions::new(st_export::Precision::Int4)).unwrap();
    let ids: ndarray::Array2<i64> = read_npy(&golden("tiny/input_ids.npy"));
    let tokens: Vec<u32> = ids.iter().take(24).map(|&t| t as u32).collect();
    let run = |huge_pages| {
        let mut e = Engine::load(&dir, &SessionOptions { threads: Some(1), huge_pages, ..Default::default() }).unwrap();
        let logits = e.forward_tokens(&tokens, 0, tokens.len()).unwrap();
        (logits, e.model().decoder.lent_weight_bytes())
    };
    let (lent, lent_bytes) = run(HugePages::On);
    let (mapped, mapped_bytes) = run(HugePages::Off);
    assert_eq!(mapped_bytes, 0, "huge pages off: nothing lent");
    let differ = lent.iter().zip(&mapped).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} of {} logits differ", lent.len());
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if cfg!(all(target_os = "linux", target_env = "gnu")) && (thp.contains("[always]") || thp.contains("[madvise]")) {
        // Every layer's tiles, scales and packed q/k/v bias; the f32 lm_head (an ORT MatMul) is not lent.
        let file = std::fs::metadata(dir.join("decoder.onnx.data")).unwrap().len() as usize;
        assert!(lent_bytes > 0 && lent_bytes < file, "{lent_bytes} of {file} bytes lent");
    } else {
        eprintln!("no transparent huge pages here ({thp:?}): nothing lent, {lent_bytes} bytes");
    }
}

//! `st bench --peers`: one round of the side-by-side workload of `benches/peers/run`, in the
//! measures' own names, as one JSON object; `benches/peers/llama_measure.py` runs the same
//! workload on llama.cpp from the `workload` this prints (the same token ids, prompt text,
//! image and token counts). Greedy throughout; end-of-turn ignored except in the constrained
//! measure, which runs to the end of a SpatialThinker-format answer under the grammar.

use crate::decode::{Sampler, SamplingParams};
use crate::engine::{Engine, GenerateOptions};
use crate::prompt::{Content, Message};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

/// Text of the 512-token prompt (repeated and cut to the token count).
const LONG_TEXT: &str = "A mobile robot enters a kitchen. On the counter to its left stand a kettle, two mugs \
and a cutting board with a knife; a window above the sink lets in the afternoon light. A chair is pushed under \
the table in the middle of the room, and a cat sleeps on the rug in front of the fridge. ";

/// The short chat prompt that the text decode measure continues.
const SHORT_QUESTION: &str = "Describe what a robot sees in a busy kitchen.";

/// A second question about the same frame.
pub const SECOND_QUESTION: &str = "Is the cat above the table? (A) yes (B) no";

/// The measures of one round; the keys are those of peers.json (milliseconds, tokens per second).
pub fn round(
    engine: &mut Engine,
    image: &Path,
    question: &str,
    tokens: usize,
    prompt_tokens: usize,
    constrained_tokens: usize,
    speculate: usize,
) -> anyhow::Result<serde_json::Value> {
    let tokenizer = engine.prompt.tokenizer.clone();
    // prompt_tok_s: `prompt_tokens` text tokens in one prefill.
    let mut long = Vec::new();
    while long.len() < prompt_tokens {
        long.extend(tokenizer.encode(LONG_TEXT)?);
    }
    long.truncate(prompt_tokens);
    engine.rewind(0);
    let t = Instant::now();
    engine.forward_tokens(&long, 0, 1)?;
    let prompt_ms = t.elapsed().as_secs_f64() * 1e3;

    // decode_tok_s (text): greedy tokens after a short chat prompt.
    let chat = engine.prompt.template.render(&[Message::user(vec![Content::Text(SHORT_QUESTION.into())])], true)?;
    let short = tokenizer.encode(&chat)?;
    engine.rewind(0);
    // The runtime's own greedy pick (the sampler chain with default settings).
    let mut greedy = Sampler::new(&SamplingParams::default())?;
    let mut history = short.clone();
    let logits = engine.forward_tokens(&short, 0, 1)?;
    let mut next = greedy.sample(&mut logits.row(0).to_vec(), &history)?;
    let t = Instant::now();
    for _ in 0..tokens {
        history.push(next);
        let logits = engine.forward_tokens(&[next], 0, 1)?;
        next = greedy.sample(&mut logits.row(0).to_vec(), &history)?;
    }
    let text_decode_s = t.elapsed().as_secs_f64();
    engine.rewind(0);

    // The image path: a new frame and the SpatialThinker prompt, greedy, `tokens` decoded.
    let plain = GenerateOptions {
        max_new_tokens: Some(tokens + 1),
        ignore_eos: true,
        grammar: false,
        speculate,
        ..Default::default()
    };
    let frame = engine.encode_image(image)?;
    let first = engine.ask(&frame, question, &plain)?;
    let t1 = &first.timings;
    let image_decode_ms: f64 = t1.decode_ms.iter().sum();
    // A second question on the same frame: its time to first token.
    let one = GenerateOptions { max_new_tokens: Some(1), ..plain.clone() };
    let second = engine.ask(&frame, SECOND_QUESTION, &one)?;

    // constrained_tok_s: to the end of a SpatialThinker-format answer under the grammar, output
    // tokens per second of wall time from the first token to the last.
    let constrained =
        GenerateOptions { max_new_tokens: Some(constrained_tokens), grammar: true, speculate, ..Default::default() };
    let mut stamps: Vec<Instant> = Vec::new();
    let answer = engine.ask_streaming(&frame, question, &constrained, |_| {
        stamps.push(Instant::now());
        ControlFlow::Continue(())
    })?;
    let constrained_tok_s = match (stamps.first(), stamps.last()) {
        (Some(a), Some(b)) if stamps.len() > 1 => (stamps.len() - 1) as f64 / (*b - *a).as_secs_f64(),
        _ => f64::NAN,
    };

    let (w, h) = frame.image.original_size;
    let prompt_text = engine.prompt.spatialthinker_prompt(w, h, question)?;
    let second_text = engine.prompt.spatialthinker_prompt(w, h, SECOND_QUESTION)?;
    Ok(serde_json::json!({
        "measures": {
            "decode_tok_s": tokens as f64 / text_decode_s,
            "decode_image_tok_s": t1.decode_tokens as f64 * 1e3 / image_decode_ms,
            "constrained_tok_s": constrained_tok_s,
            "prompt_tok_s": prompt_tokens as f64 * 1e3 / prompt_ms,
            "vision_ms": t1.preprocess_ms + t1.vision_ms,
            "image_prefill_ms": t1.prefix_prefill_ms + t1.prefill_ms,
            "ttft_ms": t1.preprocess_ms + t1.vision_ms + t1.prefix_prefill_ms + t1.prefill_ms,
            "second_question_ttft_ms": second.timings.prefill_ms,
        },
        "counts": {
            "image_prompt_tokens": first.prompt_tokens,
            "image_tokens": frame.image.num_image_tokens(engine.preprocessor.geometry.merge_size),
            "decoded_after_image": t1.decode_tokens,
            "second_question_tokens": second.prompt_tokens - second.reused_prompt_tokens,
            "constrained_tokens": answer.token_ids.len(),
            "constrained_valid": answer.response.valid,
            "constrained_drafted": answer.timings.draft_tokens,
            "constrained_accepted": answer.timings.accepted_draft_tokens,
            "speculate": speculate,
            // Resident memory while answering (after the last answer; with --vision-session
            // on-demand the vision tower is out of it).
            "rss_answering_mib": super::bench::status_mib("VmRSS:"),
        },
        "workload": {
            "long_prompt_ids": long,
            "short_prompt_ids": short,
            "image": image,
            "image_prompt_text": prompt_text,
            "second_prompt_text": second_text,
            "question": question,
            "second_question": SECOND_QUESTION,
            "tokens": tokens,
            "constrained_tokens": constrained_tokens,
        },
    }))
}

"""One round of the side-by-side workload on llama.cpp (through llama-cpp-python's bindings), the
same as `st bench --peers` runs on st: the workload file that st printed gives the token ids, the
prompt text, the image and the token counts. Prints one JSON object with the same measure names.

Greedy (argmax of the logits) everywhere; end-of-turn ignored except in the constrained measure,
which samples under the GBNF grammar of the SpatialThinker format (grammar.gbnf) to its end.
llama.cpp gets its best case for a second question on the same frame: the KV cache keeps the
image and the shared prompt prefix, and only the tokens after the longest common prefix are
evaluated (what llama-server's prompt cache does).

Run by benches/peers/run inside its venv; not part of st's runtime.
"""

import argparse
import ctypes
import json
import sys
import time

import numpy as np
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--gbnf", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=4096)
    a = ap.parse_args()
    w = json.load(open(a.workload))
    t_load = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t_load
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def last_logits():
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))

    def reset():
        llm.reset()
        llm._ctx.kv_cache_clear()
        llm.n_tokens = 0

    def rewind(pos):
        llm._ctx.kv_cache_seq_rm(0, pos, -1)
        llm.n_tokens = pos

    # prompt_tok_s
    long_ids = w["long_prompt_ids"]
    reset()
    t = time.perf_counter()
    llm.eval(long_ids)
    prompt_ms = (time.perf_counter() - t) * 1e3

    # decode_tok_s after a short text prompt
    reset()
    llm.eval(w["short_prompt_ids"])
    nxt = int(np.argmax(last_logits()))
    t = time.perf_counter()
    for _ in range(w["tokens"]):
        llm.eval([nxt])
        nxt = int(np.argmax(last_logits()))
    text_decode_s = time.perf_counter() - t

    # The image path.
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.print_timings = False
    params.n_threads = a.threads
    params.warmup = False
    mctx = mtmd.mtmd_init_from_file(a.mmproj.encode(), llm.model, params)
    if mctx is None:
        sys.exit(f"{a.mmproj}: mtmd_init_from_file failed")
    marker = mtmd.mtmd_default_marker().decode()
    reset()
    t0 = time.perf_counter()
    bitmap = mtmd.mtmd_helper_bitmap_init_from_file(mctx, w["image"].encode(), False)
    if bitmap is None:
        sys.exit(f"{w['image']}: cannot be read")
    text = w["image_prompt_text"]
    if IMAGE_PART not in text:
        sys.exit("the workload's prompt has no image part")
    it = mtmd.mtmd_input_text()
    raw = text.replace(IMAGE_PART, marker).encode()
    it.text, it.text_len, it.add_special, it.parse_special = raw, len(raw), False, True
    chunks = mtmd.mtmd_input_chunks_init()
    bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
    if mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(it), bitmaps, 1) != 0:
        sys.exit("mtmd_tokenize failed")
    vision_s = time.perf_counter() - t0
    prefill_s = 0.0
    prompt_tokens = image_tokens = 0
    question_start = None  # (position, tokens of the text chunk after the image)
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        kind = mtmd.mtmd_input_chunk_get_type(chunk)
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        prompt_tokens += n
        if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t()
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            toks = [ptr[j] for j in range(count.value)]
            if image_tokens:
                question_start = (llm.n_tokens, toks)
            t = time.perf_counter()
            llm.eval(toks)
            prefill_s += time.perf_counter() - t
        else:
            image_tokens += n
            t = time.perf_counter()
            if mtmd.mtmd_encode_chunk(mctx, chunk) != 0:
                sys.exit("mtmd_encode_chunk failed")
            embd = mtmd.mtmd_get_output_embd(mctx)
            vision_s += time.perf_counter() - t
            t = time.perf_counter()
            new_pos = llama_cpp.llama_pos(0)
            r = mtmd.mtmd_helper_decode_image_chunk(
                mctx, ctx, chunk, embd, llama_cpp.llama_pos(llm.n_tokens), 0, 512, ctypes.byref(new_pos),
                mtmd.mtmd_helper_post_decode_callback(), None,
            )
            if r != 0:
                sys.exit(f"mtmd_helper_decode_image_chunk failed ({r})")
            llm.n_tokens = new_pos.value
            prefill_s += time.perf_counter() - t
    nxt = int(np.argmax(last_logits()))
    ttft_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(w["tokens"]):
        llm.eval([nxt])
        nxt = int(np.argmax(last_logits()))
    image_decode_s = time.perf_counter() - t

    if question_start is None:
        sys.exit("no text after the image in the prompt")
    q_pos, q_toks = question_start

    def tokens_after_image(prompt_text):
        # mtmd keeps the image's closing <|vision_end|> in the text chunk after it (or not).
        tail = prompt_text.split(IMAGE_PART, 1)[1]
        for head in ("<|vision_end|>", ""):
            toks = llm.tokenize((head + tail).encode(), add_bos=False, special=True)
            if toks[:1] == q_toks[:1]:
                return toks
        sys.exit("the second prompt does not continue the image chunk as the first does")

    # A second question on the same frame: keep the cache up to the longest common prefix.
    second = tokens_after_image(w["second_prompt_text"])
    common = 0
    while common < min(len(second), len(q_toks)) and second[common] == q_toks[common]:
        common += 1
    t = time.perf_counter()
    rewind(q_pos + common)
    llm.eval(second[common:])
    int(np.argmax(last_logits()))
    second_s = time.perf_counter() - t

    # constrained_tok_s: the first question again (from the cached frame), sampled under the grammar.
    rewind(q_pos)
    llm.eval(q_toks)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    gbnf = open(a.gbnf).read().encode()
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf, b"root")
    if not grammar:
        sys.exit(f"{a.gbnf}: llama.cpp rejects the grammar")
    llama_cpp.llama_sampler_chain_add(chain, grammar)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    stamps, out = [], []
    while len(out) < w["constrained_tokens"]:
        tok = llama_cpp.llama_sampler_sample(chain, ctx, -1)
        stamps.append(time.perf_counter())
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        out.append(tok)
        llm.eval([tok])
    llama_cpp.llama_sampler_free(chain)
    constrained_tok_s = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    text_out = llm.detokenize(out, special=True).decode("utf-8", "replace")
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    mtmd.mtmd_free(mctx)
    print(
        json.dumps(
            {
                "measures": {
                    "decode_tok_s": w["tokens"] / text_decode_s,
                    "decode_image_tok_s": w["tokens"] / image_decode_s,
                    "constrained_tok_s": constrained_tok_s,
                    "prompt_tok_s": len(long_ids) * 1e3 / prompt_ms,
                    "vision_ms": vision_s * 1e3,
                    "image_prefill_ms": prefill_s * 1e3,
                    "ttft_ms": ttft_s * 1e3,
                    "second_question_ttft_ms": second_s * 1e3,
                },
                "counts": {
                    "image_prompt_tokens": prompt_tokens,
                    "image_tokens": image_tokens,
                    "second_question_tokens": len(second) - common,
                    "constrained_tokens": len(stamps),
                    "constrained_ends_with_answer": text_out.rstrip().endswith("</answer>"),
                },
                "load_s": load_s,
                "llama_cpp_python": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

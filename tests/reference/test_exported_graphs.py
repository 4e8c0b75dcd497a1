#!/usr/bin/env python3
"""The graphs `st export` writes, run in Python onnxruntime (the project venv: onnxruntime +
numpy, no torch), give the transformers goldens' logits. A stock onnxruntime has none of st's
operators, so `make test` exports with `--attention gqa` (ORT's GroupQueryAttention) and
`--attention standard`; st's own attention is checked against ORT's in tests/attention_op.rs.

usage: test_exported_graphs.py EXPORTED_DIR GOLDEN_DIR [EXPORTED_DIR GOLDEN_DIR ...]

Inputs are built here independently of the Rust runtime: M-RoPE cos/sin in numpy from the
golden position ids (transformers' formula, float32), a causal bias, image rows from the golden
vision tower output. Bound: max|Δ|/max|ref| ≤ 1e-4, as for the Rust-side test.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def mrope_cos_sin(pos, head_dim, theta, section):
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(np.float32)
    freqs = pos[..., None].astype(np.float32) * inv  # [3, b, s, hd/2]
    axis = np.concatenate([np.full(n, i) for i, n in enumerate(section)])
    f = np.stack([freqs[axis[j], :, :, j] for j in range(len(axis))], -1)  # slot j from its section's axis
    emb = np.concatenate([f, f], -1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def check(exported: Path, golden: Path) -> float:
    manifest = json.loads((exported / "manifest.json").read_text())
    text = manifest["config"]["text"]
    ids = np.load(golden / "input_ids.npy")
    pos = np.load(golden / "position_ids.npy")
    vision = np.load(golden / "vision_embeds.npy")
    want = np.load(golden / "logits.npy")
    embeds = ort.InferenceSession(str(exported / "embed.onnx")).run(None, {"input_ids": ids})[0]
    embeds[0, ids[0] == manifest["config"]["image_token_id"]] = vision
    cos, sin = mrope_cos_sin(pos, text["head_dim"], text["rope_theta"], text["mrope_section"])
    seq = ids.shape[1]
    bias = np.triu(np.full((seq, seq), np.finfo(np.float32).min, np.float32), 1)[None, None]
    feeds = {"inputs_embeds": embeds, "rope_cos": cos, "rope_sin": sin,
             "logits_to_keep": np.array([want.shape[0]], np.int64)}
    inputs = {i["name"] for i in manifest["graphs"]["decoder"]["inputs"]}
    if "seqlens_k" in inputs:  # GroupQueryAttention: causal inside the op
        feeds["seqlens_k"] = np.array([seq - 1], np.int32)
        feeds["total_sequence_length"] = np.array(seq, np.int32)
    else:
        feeds["attention_bias"] = bias
    empty = np.zeros((1, text["num_key_value_heads"], 0, text["head_dim"]), np.float32)
    for i in range(text["num_hidden_layers"]):
        feeds[f"past_key.{i}"] = empty
        feeds[f"past_value.{i}"] = empty
    logits = ort.InferenceSession(str(exported / "decoder.onnx")).run(["logits"], feeds)[0][0]
    return float(np.abs(logits - want).max() / np.abs(want).max())


def main():
    args = sys.argv[1:]
    passed = failed = 0
    for exported, golden in zip(args[::2], args[1::2]):
        err = check(Path(exported), Path(golden))
        ok = err <= 1e-4
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {exported}: logits max|Δ|/max|ref| = {err:.3e}")
    print(f"python onnxruntime: {passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()

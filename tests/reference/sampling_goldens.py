#!/usr/bin/env python3
"""transformers' logits processors (repetition penalty, temperature, top-k, top-p, in
`generate`'s order) over random logits rows, for the Rust sampling chain's parity test.
Writes tests/fixtures/goldens/sampling.json. Run alone or from make_fixtures.py."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES  # noqa: E402

CASES = [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.3},
    {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0},
    {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.0},
    {"temperature": 1.5, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.1},
    {"temperature": 0.3, "top_k": 1, "top_p": 0.5, "repetition_penalty": 2.0},
    {"temperature": 2.0, "top_k": 0, "top_p": 0.99, "repetition_penalty": 0.8},
]


def processors(case):
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)
    out = LogitsProcessorList()
    if case["repetition_penalty"] != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(case["repetition_penalty"]))
    out.append(TemperatureLogitsWarper(case["temperature"]))
    if case["top_k"] > 0:
        out.append(TopKLogitsWarper(case["top_k"]))
    if case["top_p"] < 1.0:
        out.append(TopPLogitsWarper(case["top_p"]))
    return out


def write(out: Path):
    import torch
    g = torch.Generator().manual_seed(0)
    vocab = 300
    rows = []
    for k, case in enumerate(CASES):
        for r in range(4):
            logits = torch.randn(1, vocab, generator=g) * (1 + 3 * r)
            # Exact ties: top-k keeps them all, deterministically. torch.sort orders ties
            # arbitrarily, so top-p's cut through a tie is not reproducible: no ties there.
            if r == 3 and case["top_p"] == 1.0:
                logits = torch.round(logits)
            history = torch.randint(0, vocab, (1, 40), generator=g)
            scores = processors(case)(history, logits.clone())
            rows.append({**case, "history": history[0].tolist(), "logits": logits[0].tolist(),
                         "processed": [None if v == float("-inf") else v for v in scores[0].tolist()]})
    out.write_text(json.dumps(rows))


if __name__ == "__main__":
    write(FIXTURES / "goldens" / "sampling.json")

#!/usr/bin/env python3
"""Regenerate every committed fixture under tests/fixtures/ from the reference (transformers,
PIL, qwen-vl-utils). Run through `make fixtures` (it creates the pinned venv .venv-ref)."""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, FIXTURES, spatialthinker_messages  # noqa: E402
import images  # noqa: E402
import model_goldens  # noqa: E402
import reward_reference  # noqa: E402
import sampling_goldens  # noqa: E402
import tiny_models  # noqa: E402


def real_tokenizer_ids(img_dir: Path, out: Path):
    """input_ids of the SpatialThinker prompt with the real Qwen2.5-VL vocabulary."""
    from transformers import Qwen2_5_VLProcessor, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    import numpy as np
    tok_dir = CACHE / "qwen2.5-vl-tokenizer"
    if not tok_dir.exists():
        sys.exit("run tests/reference/fetch_qwen_tokenizer.py first")
    tok = Qwen2Tokenizer.from_pretrained(tok_dir)
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=tiny_models.MIN_PIXELS, max_pixels=tiny_models.MAX_PIXELS),
                               tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=(tok_dir / "chat_template.jinja").read_text())
    original, resized = model_goldens.image_inputs(img_dir / "chelsea.png")
    text, inputs = model_goldens.encode(proc, spatialthinker_messages(*original.size), [resized], model_goldens.IMAGE_MAX_PIXELS)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "input_ids.npy", inputs["input_ids"].numpy().astype(np.int64))
    (out / "prompt.txt").write_text(text)
    # Plain-text encodings (no chat template) for tokenizer parity on tricky strings.
    samples = ["Hello world", "  leading spaces\n\nand\ttabs", "数字 123456 and émigré café", "<|im_start|>user\nhi<|im_end|>",
               '{"id": "cup.1", "bbox": [0, 272, 310, 551]}', "I'll we've they're", "\U0001F600 emoji"]
    (out / "samples.json").write_text(json.dumps([{"text": s, "ids": tok.encode(s)} for s in samples], ensure_ascii=False, indent=1))


def smart_resize_table(out: Path):
    """qwen-vl-utils' smart_resize over many sizes, including x.5 ties and both bounds."""
    import random
    from qwen_vl_utils.vision_process import smart_resize
    rng = random.Random(0)
    rows = []
    sizes = [(h, w) for h in (1, 13, 14, 27, 28, 42, 70, 98, 126, 300, 1080) for w in (1, 14, 42, 70, 451, 1920)]
    sizes += [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(400)]
    bounds = [(3136, 12845056), (3136, 256 * 28 * 28), (56 * 56, 64 * 28 * 28), (100 * 28 * 28, 16384 * 28 * 28)]
    for (h, w) in sizes:
        for mn, mx in bounds:
            try:
                rows.append([h, w, mn, mx, *smart_resize(h, w, 28, mn, mx)])
            except ValueError:
                rows.append([h, w, mn, mx, None, None])
    out.write_text(json.dumps(rows))


def main():
    img_dir = FIXTURES / "images"
    pre_dir = FIXTURES / "preprocess"
    for d in (img_dir, pre_dir):
        shutil.rmtree(d, ignore_errors=True)
    cases = images.write_inputs(img_dir)
    summary = {}
    for name in ("tiny", "tiny-b"):
        processor = tiny_models.make_processor(tiny_models.SHAPES[name]["bpe"])
        model = tiny_models.make_model(name, processor)
        ckpt = FIXTURES / "models" / name
        tiny_models.save(model, processor, ckpt)
        processor.image_processor.save_pretrained(ckpt)
        # The goldens come from transformers loading the saved checkpoint, as a user would (the
        # in-memory model's rotary buffers went through the bf16 cast of save()).
        model = tiny_models.load(ckpt)
        if name == "tiny":
            images.golden(processor, img_dir, pre_dir, cases)
            model_goldens.write_rope_cases(model, processor, img_dir, FIXTURES / "goldens" / "rope")
        summary[name] = model_goldens.write_model_goldens(model, processor, img_dir, FIXTURES / "goldens" / name)
        model_goldens.write_quantized_goldens(model, processor, img_dir, FIXTURES / "goldens" / name)
    tiny_models.rewrite_legacy(FIXTURES / "models" / "tiny", FIXTURES / "models" / "tiny-legacy")
    tiny_models.rewrite_lm_names(FIXTURES / "models" / "tiny-b", FIXTURES / "models" / "tiny-b-lm-names")
    smart_resize_table(FIXTURES / "goldens" / "smart_resize.json")
    real_tokenizer_ids(img_dir, FIXTURES / "goldens" / "qwen-tokenizer")
    sampling_goldens.write(FIXTURES / "goldens" / "sampling.json")
    reward_reference.write(FIXTURES / "goldens" / "reward_cases.jsonl")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

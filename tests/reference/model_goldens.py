"""Model goldens from transformers (CPU, float32): prompt ids, M-RoPE ids, vision tower output,
logits of one full forward, and greedy tokens."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils import fetch_image

from common import QUESTION, spatialthinker_messages, user_text

# The image every model golden uses: chelsea (451×300) resized to 224×140 → a 16×10 patch grid
# (8×5 merged tokens), so windows of both tiny shapes are partly filled.
IMAGE_MAX_PIXELS = 37632
GREEDY_TOKENS = 32
LOGIT_ROWS = 32


def image_inputs(img_path: Path, max_pixels: int = IMAGE_MAX_PIXELS):
    original = Image.open(img_path)
    resized = fetch_image({"image": str(img_path), "max_pixels": max_pixels})
    return original, resized


def encode(processor, messages, images, max_pixels):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    size = {"shortest_edge": processor.image_processor.size["shortest_edge"], "longest_edge": max_pixels}
    inputs = processor(text=[text], images=images, return_tensors="pt", images_kwargs={"size": size})
    return text, inputs


def rope(model, inputs):
    pos, deltas = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=inputs.get("attention_mask"))
    return pos.numpy().astype(np.int64), deltas.numpy().astype(np.int64)


def write_model_goldens(model, processor, img_dir: Path, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    original, resized = image_inputs(img_dir / "chelsea.png")
    w, h = original.size
    text, inputs = encode(processor, spatialthinker_messages(w, h), [resized], IMAGE_MAX_PIXELS)
    (out / "prompt.txt").write_text(text)
    np.save(out / "input_ids.npy", inputs["input_ids"].numpy().astype(np.int64))
    # Same image and patch geometry for every tiny shape: stored once beside the model folders.
    np.save(out.parent / "chelsea_224x140.pixel_values.npy", inputs["pixel_values"].numpy().astype(np.float32))
    np.save(out / "image_grid_thw.npy", inputs["image_grid_thw"].numpy().astype(np.int64))
    pos, deltas = rope(model, inputs)
    np.save(out / "position_ids.npy", pos)
    np.save(out / "rope_deltas.npy", deltas)
    with torch.no_grad():
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        emb = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        emb = torch.cat(list(emb), 0) if isinstance(emb, (list, tuple)) else emb
        np.save(out / "vision_embeds.npy", emb.float().numpy())
        logits = model(**inputs).logits[0].float().numpy()
        # The last LOGIT_ROWS positions of the full forward (every one depends on the image tokens).
        np.save(out / "logits.npy", logits[-LOGIT_ROWS:])
        gen = model.generate(**inputs, max_new_tokens=GREEDY_TOKENS, do_sample=False)
    new = gen[0, inputs["input_ids"].shape[1]:].numpy().astype(np.int64)
    np.save(out / "greedy_tokens.npy", new)
    top2 = np.sort(logits[-1])[-2:]
    meta = dict(question=QUESTION, image="chelsea.png", image_max_pixels=IMAGE_MAX_PIXELS, original_size=[w, h],
                resized_size=list(resized.size), prompt_len=int(inputs["input_ids"].shape[1]), logit_rows=LOGIT_ROWS,
                greedy_text=processor.tokenizer.decode(new), last_logit_margin=float(top2[1] - top2[0]))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# Quantization schemes with goldens: (block, symmetric).
INT4_SCHEMES = [(32, True), (128, False)]


def write_quantized_goldens(model, processor, img_dir: Path, out: Path):
    """Logits of the reference run on the int4 / fp8 quantize-dequantized text linears (what the exported
    int4 graph computes with), so the bound on the graph does not include the rounding."""
    import copy
    import quant
    original, resized = image_inputs(img_dir / "chelsea.png")
    _, inputs = encode(processor, spatialthinker_messages(*original.size), [resized], IMAGE_MAX_PIXELS)
    schemes = [(f"int4-b{block}-{'sym' if sym else 'asym'}", lambda w, b=block, s=sym: quant.int4_dequantized(w, b, s))
               for block, sym in INT4_SCHEMES]
    schemes.append(("fp8-channel", quant.fp8_dequantized))
    schemes.append(("lm_head-int8-b32", None))
    for scheme, dequantized in schemes:
        q = copy.deepcopy(model)
        with torch.no_grad():
            if dequantized is None:  # only lm_head, as its own (untied) parameter
                w = quant.nbits_dequantized(q.lm_head.weight.numpy(), 8, 32, True)
                q.lm_head.weight = torch.nn.Parameter(torch.from_numpy(w))
            else:
                for layer in q.model.language_model.layers:
                    for name in quant.TEXT_LINEARS:
                        lin = layer.get_submodule(name)
                        lin.weight.copy_(torch.from_numpy(dequantized(lin.weight.numpy())))
            logits = q(**inputs).logits[0].float().numpy()
        d = out / scheme
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "logits.npy", logits[-LOGIT_ROWS:])


def write_rope_cases(model, processor, img_dir: Path, out: Path):
    """M-RoPE for layouts the runtime must handle: image first, text first, two images."""
    out.mkdir(parents=True, exist_ok=True)
    _, a = image_inputs(img_dir / "chelsea.png")
    _, b = image_inputs(img_dir / "coffee_edge.png", max_pixels=16 * 28 * 28)
    cases = {
        "image_first": ([{"type": "image"}, {"type": "text", "text": user_text(451, 300)}], [a]),
        "text_first": ([{"type": "text", "text": "Look at this: "}, {"type": "image"}, {"type": "text", "text": QUESTION}], [a]),
        "two_images": ([{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}, {"type": "text", "text": QUESTION}], [a, b]),
    }
    for name, (content, images) in cases.items():
        _, inputs = encode(processor, [{"role": "user", "content": content}], images, IMAGE_MAX_PIXELS)
        pos, deltas = rope(model, inputs)
        np.save(out / f"{name}.input_ids.npy", inputs["input_ids"].numpy().astype(np.int64))
        np.save(out / f"{name}.image_grid_thw.npy", inputs["image_grid_thw"].numpy().astype(np.int64))
        np.save(out / f"{name}.position_ids.npy", pos)
        np.save(out / f"{name}.rope_deltas.npy", deltas)

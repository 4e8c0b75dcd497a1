"""Tiny random-weight Qwen2.5-VL checkpoints in the exact HF layout, written by transformers'
own save_pretrained, plus the two other on-disk layouts `st` must load (docs/FORMATS.md#the-model)."""
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from common import CHAT_TEMPLATE
import tiny_tokenizer

# The real checkpoint's image bounds (preprocessor_config.json of Qwen2.5-VL-7B-Instruct).
MIN_PIXELS, MAX_PIXELS = 3136, 12845056

# Two shapes that differ in every dimension the code reads.
SHAPES = {
    "tiny": dict(
        vocab=1024, bpe=700, seed=1,
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0}),
        vision=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    window_size=112, fullatt_block_indexes=[2], tokens_per_second=2),
        tie=False,
    ),
    "tiny-b": dict(
        vocab=1152, bpe=900, seed=5,
        text=dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=3,
                  num_key_value_heads=1, rms_norm_eps=1e-5, max_position_embeddings=2048,
                  rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}),
        vision=dict(depth=3, hidden_size=48, intermediate_size=80, num_heads=3, out_hidden_size=96,
                    window_size=56, fullatt_block_indexes=[0, 2], tokens_per_second=2),
        tie=True,
    ),
}


def make_processor(vocab_size_bpe: int) -> Qwen2_5_VLProcessor:
    tok = tiny_tokenizer.train(vocab_size_bpe)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor()
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=CHAT_TEMPLATE)


def make_model(name: str, processor) -> Qwen2_5_VLForConditionalGeneration:
    shape = SHAPES[name]
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=shape["vocab"], hidden_act="silu", tie_word_embeddings=shape["tie"],
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], **shape["text"]),
        vision_config=dict(hidden_act="silu", patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_channels=3, **shape["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape["tie"], initializer_range=0.02,
    )
    torch.manual_seed(shape["seed"])
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Larger random weights than the 0.02 default so greedy decoding has clear margins.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or "ln_q" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.05))
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    # The published files are bf16-representable; keep these the same so bf16 and f32 copies agree.
    model = model.to(torch.bfloat16).to(torch.float32).eval()
    return model


def save(model, processor, out: Path, dtype=torch.bfloat16):
    if out.exists():
        shutil.rmtree(out)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    processor.save_pretrained(out)


def load(path: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def rewrite_legacy(src: Path, out: Path, shards: int = 3):
    """The older layout of the published SpatialThinker-7B files: flat config with rope_scaling,
    float32 weights, sharded with model.safetensors.index.json."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors*", "config.json"))
    cfg = json.loads((src / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {k: v for k, v in cfg.items() if k not in ("dtype",)}
    for k, v in text.items():
        if k not in ("model_type", "dtype", "architectures", "layer_types"):
            flat.setdefault(k, v)
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["torch_dtype"] = "float32"
    flat["vision_config"].pop("dtype", None)
    flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels")
    flat["transformers_version"] = "4.41.2"
    (out / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    tensors = {k: v.float() for k, v in load_file(src / "model.safetensors").items()}
    names = sorted(tensors)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, out / fname, metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * 4
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def rewrite_lm_names(src: Path, out: Path):
    """The `model.language_model.…` / `model.visual.…` naming some tools write."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = load_file(src / "model.safetensors")
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("model."):
            k = "model.language_model." + k[len("model."):]
        elif k.startswith("visual."):
            k = "model." + k
        renamed[k] = v
    save_file(renamed, out / "model.safetensors", metadata={"format": "pt"})

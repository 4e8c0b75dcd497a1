"""LoRA goldens from PEFT (CPU, float32), for st-train and `st export --lora`.

For each tiny model: a LoRA adapter made by PEFT with seeded nonzero weights (B is zero at init,
so both A and B are redrawn) and saved by PEFT's own `save_pretrained` (the committed adapter
st must read); the logits of the adapted model on the model goldens' prompt (last rows, as
logits.npy) and 32 greedy tokens; the same after `merge_and_unload` (what an export with the
adapter merged must reproduce). tiny-b's adapter uses rsLoRA and a subset of targets, and is also
written with the older key prefix (`base_model.model.model.layers.N…`) that files made with
transformers < 4.52 carry.

    .venv-train/bin/python tests/reference/peft_goldens.py      (make train-goldens)

`check` mode loads an adapter st wrote with `PeftModel.from_pretrained`, requires no missing and
no unexpected keys, and compares the logits with the ones st computed:

    python tests/reference/peft_goldens.py check MODEL_DIR ADAPTER_DIR ST_LOGITS.npy GOLDEN_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GREEDY_TOKENS = 32

# The text model's linears only: the vision tower's MLP has the same gate/up/down names.
TEXT_TARGETS = r".*\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
CASES = {
    "tiny": dict(r=4, lora_alpha=8, target_modules=TEXT_TARGETS, use_rslora=False),
    "tiny-b": dict(r=3, lora_alpha=5, target_modules=r".*\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.(down_proj))",
                   use_rslora=True),
}


def load_base(model_dir: Path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def golden_inputs(model, golden: Path):
    ids = torch.from_numpy(np.load(golden / "input_ids.npy"))
    pixels = torch.from_numpy(np.load(golden.parent / "chelsea_224x140.pixel_values.npy"))
    grid = torch.from_numpy(np.load(golden / "image_grid_thw.npy"))
    mm = (ids == model.config.image_token_id).long()
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_grid_thw=grid,
                mm_token_type_ids=mm)


def logits_and_greedy(model, inputs, rows: int):
    with torch.no_grad():
        logits = model(**inputs).logits[0].float().numpy()
        gen = model.generate(**inputs, max_new_tokens=GREEDY_TOKENS, do_sample=False)
    return logits[-rows:], gen[0, inputs["input_ids"].shape[1]:].numpy().astype(np.int64)


def write(name: str):
    from peft import LoraConfig, get_peft_model
    model_dir = FIXTURES / "models" / name
    golden = FIXTURES / "goldens" / name
    rows = np.load(golden / "logits.npy").shape[0]
    base = load_base(model_dir)
    cfg = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **CASES[name])
    model = get_peft_model(base, cfg).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname or "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    adapter_dir = FIXTURES / "adapters" / f"{name}-peft"
    model.peft_config["default"].base_model_name_or_path = f"tests/fixtures/models/{name}"
    model.save_pretrained(adapter_dir)
    (adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    inputs = golden_inputs(base, golden)
    out = golden / "peft"
    out.mkdir(parents=True, exist_ok=True)
    logits, tokens = logits_and_greedy(model, inputs, rows)
    np.save(out / "logits.npy", logits)
    np.save(out / "greedy_tokens.npy", tokens)
    merged = model.merge_and_unload().eval()
    logits_m, tokens_m = logits_and_greedy(merged, inputs, rows)
    np.save(out / "merged_logits.npy", logits_m)
    np.save(out / "merged_greedy_tokens.npy", tokens_m)
    # The same adapter with the older key prefix.
    sd = load_file(adapter_dir / "adapter_model.safetensors")
    legacy = {k.replace("base_model.model.model.language_model.", "base_model.model.model."): v for k, v in sd.items()}
    legacy_dir = FIXTURES / "adapters" / f"{name}-peft-legacy-keys"
    legacy_dir.mkdir(parents=True, exist_ok=True)
    save_file(legacy, legacy_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    (legacy_dir / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text())
    diff = float(np.abs(logits - np.load(golden / "logits.npy")).max())
    print(f"{name}: {len(sd)} LoRA tensors, logits moved by up to {diff:.3f} from the base, "
          f"greedy {'differs' if not np.array_equal(tokens, np.load(golden / 'greedy_tokens.npy')) else 'unchanged'}")


def check(model_dir: Path, adapter_dir: Path, st_logits: Path, golden: Path):
    """An adapter st wrote loads in PEFT with exactly its keys, and gives st's logits."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    base = load_base(model_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    file_keys = set(load_file(adapter_dir / "adapter_model.safetensors").keys())
    model_keys = set(get_peft_model_state_dict(model).keys())
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    if missing or unexpected:
        sys.exit(f"FAIL {adapter_dir}: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0]
    if any("visual" in n for n in lora_modules):
        sys.exit(f"FAIL {adapter_dir}: PEFT adapted vision modules too: {[n for n in lora_modules if 'visual' in n][:3]}")
    want = np.load(st_logits)
    logits, _ = logits_and_greedy(model, golden_inputs(base, golden), want.shape[0])
    err = float(np.abs(logits - want).max() / np.abs(logits).max())
    if not err < 1e-4:
        sys.exit(f"FAIL {adapter_dir}: relative logit error {err:.2e} against PEFT")
    print(f"ok {adapter_dir.name}: {len(file_keys)} keys, {len(lora_modules)} LoRA modules, relative logit error {err:.2e}")


if __name__ == "__main__":
    torch.manual_seed(0)
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        check(*map(Path, sys.argv[2:6]))
    else:
        for case in CASES:
            write(case)

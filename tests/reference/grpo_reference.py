"""GRPO objective goldens (tests/fixtures/goldens/grpo_loss.json), an independent PyTorch
implementation of EasyR1's formulas (verl/trainer/core_algos.py; the formulas are written out in docs/TRAINING.md#grpo):
group advantages with Bessel's std, the token-level clipped surrogate with clip_low / clip_high
and dual clip for negative advantages, low_var_kl, and the three aggregations. Gradients of the
loss with respect to the current log-probabilities are included, so the Rust side checks the
backward too.

    .venv-train/bin/python tests/reference/grpo_reference.py
"""
import json
import math
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "goldens" / "grpo_loss.json"


def advantages(rewards, group):
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, group)
    a = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-6)  # torch.std: unbiased
    return a.view(-1)


def agg_loss(loss_mat, mask, mode):
    if mode == "token-mean":
        return (loss_mat * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        return ((loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum-norm":
        return ((loss_mat * mask).sum(-1) / loss_mat.shape[-1]).mean()
    raise ValueError(mode)


def policy_loss(logp, old, adv, mask, clip_low, clip_high, dual, mode):
    neg_kl = torch.clamp(logp - old, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    a = adv.unsqueeze(-1)
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    higher = torch.maximum(pg1, pg2)
    clip_frac = ((pg1 < pg2).float() * mask).sum() / mask.sum()
    lower = torch.minimum(higher, -a * dual)
    pg = torch.where(a < 0, lower, higher)
    return agg_loss(pg, mask, mode), clip_frac


def low_var_kl(logp, ref):
    kl = torch.clamp(ref - logp, -20, 20)
    return torch.clamp(torch.exp(kl) - kl - 1, -10, 10)


def case(seed, b, t, group, kl_coef, mode):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.rand(b, generator=g, dtype=torch.float64).round(decimals=1).tolist()
    if seed % 3 == 0:  # one group with zero spread
        rewards[:group] = [0.5] * group
    adv = advantages(rewards, group).float()
    old = -torch.rand(b, t, generator=g) * 3
    logp = (old + torch.randn(b, t, generator=g) * 0.4).requires_grad_(True)  # ratios well past the clip range
    ref = old + torch.randn(b, t, generator=g) * 0.3
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    pg, clip_frac = policy_loss(logp, old, adv, mask, 0.2, 0.3, 3.0, mode)
    kl = agg_loss(low_var_kl(logp, ref), mask, mode)
    loss = pg + kl_coef * kl
    loss.backward()
    return dict(
        group=group, kl_coef=kl_coef, loss_agg=mode, rewards=rewards, advantages=adv.tolist(),
        logp=logp.detach().tolist(), old_logp=old.tolist(), ref_logp=ref.tolist(), mask=mask.tolist(),
        loss=loss.item(), pg_loss=pg.item(), kl=kl.item(), clip_frac=clip_frac.item(), grad_logp=logp.grad.tolist(),
    )




# ---- One GRPO update of a LoRA policy, end to end, with transformers + PEFT (goldens/tiny/grpo/) ----
UPDATE = dict(completions=[[5, 77, 301, 12, 640], [9, 9, 420, 33, 101, 7, 250], [600, 2, 45, 310, 78, 11], [99, 150, 3, 500]],
              rewards=[1.0, 0.2, 0.6, 0.0], lr=0.05, weight_decay=0.01, kl_coef=0.01, max_grad_norm=1.0, epochs=2)


def st_name(peft_name: str) -> str:
    """PEFT parameter name → st's (`model.layers.0.self_attn.q_proj.lora_A`)."""
    rest = peft_name.split("language_model.", 1)[1]
    return "model." + rest.replace(".default.weight", "")


def write_update():
    import numpy as np
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration
    from safetensors.torch import save_file
    fixtures = OUT.parent.parent
    golden = OUT.parent / "tiny"
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(fixtures / "models" / "tiny", dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, fixtures / "adapters" / "tiny-peft", is_trainable=True).eval()
    prompt = torch.from_numpy(np.load(golden / "input_ids.npy"))
    pixels = torch.from_numpy(np.load(OUT.parent / "chelsea_224x140.pixel_values.npy"))
    grid = torch.from_numpy(np.load(golden / "image_grid_thw.npy"))
    p = prompt.shape[1]

    def logps(completion):
        ids = torch.cat([prompt, torch.tensor([completion])], 1)
        mm = (ids == base.config.image_token_id).long()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_grid_thw=grid,
                       mm_token_type_ids=mm).logits[0].float()
        lp = torch.log_softmax(logits[p - 1: p - 1 + len(completion)], -1)
        return lp.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1)

    u = UPDATE
    adv = advantages(u["rewards"], len(u["rewards"])).float()
    with torch.no_grad():
        old = [logps(c) for c in u["completions"]]
        with model.disable_adapter():
            ref = [logps(c) for c in u["completions"]]
    params = {st_name(n): q for n, q in model.named_parameters() if q.requires_grad}
    opt = torch.optim.AdamW(list(params.values()), lr=u["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=u["weight_decay"],
                            foreach=False)
    n_tokens = sum(len(c) for c in u["completions"])
    out = golden / "grpo"
    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for epoch in range(u["epochs"]):
        opt.zero_grad()
        tot = dict(loss=0.0, pg_loss=0.0, kl=0.0, clip_frac=0.0)
        for i, c in enumerate(u["completions"]):
            lp = logps(c)
            mask = torch.ones(1, len(c))
            a = adv[i: i + 1]
            pg_sum = policy_loss(lp.unsqueeze(0), old[i].unsqueeze(0), a, mask, 0.2, 0.3, 3.0, "token-mean")[0] * len(c)
            neg_kl = torch.clamp(lp - old[i], -20.0, 20.0)
            ratio = torch.exp(neg_kl)
            clipped = ((-a * ratio) < (-a * torch.clamp(ratio, 0.8, 1.3))).float().sum()
            kl_sum = low_var_kl(lp, ref[i]).sum()
            loss = (pg_sum + u["kl_coef"] * kl_sum) / n_tokens
            loss.backward()
            tot["loss"] += loss.item()
            tot["pg_loss"] += pg_sum.item() / n_tokens
            tot["kl"] += kl_sum.item() / n_tokens
            tot["clip_frac"] += clipped.item() / n_tokens
        if epoch == 0:
            save_file({n: q.grad.detach().contiguous() for n, q in params.items()}, out / "grads_1.safetensors")
        tot["grad_norm"] = torch.nn.utils.clip_grad_norm_(list(params.values()), u["max_grad_norm"]).item()
        opt.step()
        save_file({n: q.detach().contiguous() for n, q in params.items()}, out / f"adapter_{epoch + 1}.safetensors")
        stats.append(tot)
    (out / "update.json").write_text(json.dumps(dict(UPDATE, advantages=adv.tolist(), stats=stats), indent=1))
    print(f"wrote {out}: {stats}")


if __name__ == "__main__":
    cases = []
    for i, (mode, kl) in enumerate([("token-mean", 1e-2), ("token-mean", 0.0), ("seq-mean-token-mean", 1e-2),
                                     ("seq-mean-token-sum-norm", 5e-2), ("token-mean", 0.1), ("seq-mean-token-mean", 0.0)]):
        cases.append(case(seed=i, b=8, t=11, group=4, kl_coef=kl, mode=mode))
    OUT.write_text(json.dumps(dict(generator="tests/reference/grpo_reference.py", torch=torch.__version__, cases=cases)))
    print(f"wrote {OUT} ({len(cases)} cases)")
    write_update()

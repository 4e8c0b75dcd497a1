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


if __name__ == "__main__":
    cases = []
    for i, (mode, kl) in enumerate([("token-mean", 1e-2), ("token-mean", 0.0), ("seq-mean-token-mean", 1e-2),
                                     ("seq-mean-token-sum-norm", 5e-2), ("token-mean", 0.1), ("seq-mean-token-mean", 0.0)]):
        cases.append(case(seed=i, b=8, t=11, group=4, kl_coef=kl, mode=mode))
    OUT.write_text(json.dumps(dict(generator="tests/reference/grpo_reference.py", torch=torch.__version__, cases=cases)))
    print(f"wrote {OUT} ({len(cases)} cases)")

"""The int4 block quantizer of `st export` (export/src/quant/int4.rs), re-implemented in numpy
float32 so the reference can run on exactly the weights the exported graph computes with."""
import numpy as np


def int4_dequantized(w: np.ndarray, block: int, symmetric: bool) -> np.ndarray:
    return nbits_dequantized(w, 4, block, symmetric)


def nbits_dequantized(w: np.ndarray, bits: int, block: int, symmetric: bool) -> np.ndarray:
    """export/src/quant/nbits.rs: w [N, K] float32 → the dequantized [N, K] float32 weights."""
    mid, qmax = np.float32(2 ** (bits - 1)), np.float32(2 ** bits - 1)
    w = w.astype(np.float32)
    n, k = w.shape
    out = np.zeros_like(w)
    for b0 in range(0, k, block):
        vals = w[:, b0:b0 + block]
        if symmetric:
            idx = np.argmax(np.abs(vals), axis=1)
            v = vals[np.arange(n), idx]
            scale = (v / -mid).astype(np.float16).astype(np.float32)
            zp = np.full(n, mid, np.float32)
        else:
            mn = np.minimum(vals.min(axis=1), np.float32(0))
            mx = np.maximum(vals.max(axis=1), np.float32(0))
            scale = ((mx - mn) / qmax).astype(np.float16).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                zp = np.where(scale == 0, mid, np.clip(np.rint(-mn / scale), 0, qmax)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(scale[:, None] == 0, zp[:, None], np.clip(np.rint(vals / scale[:, None]) + zp[:, None], 0, qmax))
        out[:, b0:b0 + block] = ((q - zp[:, None]) * scale[:, None]).astype(np.float32)
    return out


TEXT_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def fp8_dequantized(w: np.ndarray) -> np.ndarray:
    """Per-output-channel E4M3FN (export/src/quant/fp8.rs): scale = max|row| / 448, q = e4m3fn(w / scale)."""
    import torch
    w = torch.from_numpy(w.astype(np.float32))
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    q = (w / scale).to(torch.float8_e4m3fn).to(torch.float32)
    return (q * scale).numpy()

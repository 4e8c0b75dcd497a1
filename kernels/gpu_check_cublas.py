"""Peer timing for `kernels/gpu-check`: cuBLAS fp16 (through torch.matmul) at the same 7B shapes and
M values as examples/gpu_check.rs, with the same L2-defeating rotation over weight copies. Python is here
only as a peer benchmark, never in the runtime."""
import sys

import torch

MATRICES = [("q_proj/o_proj", 3584, 3584), ("k_proj/v_proj", 512, 3584), ("gate_proj/up_proj", 18944, 3584),
            ("down_proj", 3584, 18944), ("lm_head", 152064, 3584)]
peak = float(sys.argv[1]) if len(sys.argv) > 1 else 3350.0
iters = 50
print(f"\ncuBLAS fp16 via torch {torch.__version__}, {torch.cuda.get_device_name()}")
print("| matrix | n x k | M | kernel | weights (MB) | time (us) | GB/s | of peak | TFLOP/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name, n, k in MATRICES:
    wbytes = n * k * 2
    copies = max(1, min(16, -(-(256 << 20) // wbytes)))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
    for m in (1, 4, 8, 512):
        a = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for i in range(3):
            torch.matmul(a, ws[i % copies].t())
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iters):
            torch.matmul(a, ws[i % copies].t())
        end.record()
        torch.cuda.synchronize()
        t = start.elapsed_time(end) / iters * 1e-3
        io = (m * k + m * n) * 2
        gbps = (wbytes + io) / t / 1e9
        print(f"| {name} | {n} x {k} | {m} | cuBLAS fp16 | {wbytes / 1e6:.1f} | {t * 1e6:.1f} | {gbps:.0f} | "
              f"{100 * gbps / peak:.0f} % | {2 * m * n * k / t / 1e12:.1f} |")

// Grouped-query attention for f32 activations: ORT's com.microsoft.GroupQueryAttention as st's CPU kernel
// implements it (src/cpu/attention.rs: batch 1, do_rotary 1 non-interleaved, causal by token index, the KV
// cache one buffer per KV head of `capacity` positions that the new keys and values are appended to in
// place). ORT's own CUDA GroupQueryAttention takes fp16/bf16 only; st's exported graphs are f32, so without
// this the node would run on the CPU and the cache would live in host memory.
//
// Three kernels, launched in this order on one stream (launch.rs, gqa_plan):
//   st_gqa_copy_f32    the past's positions into a present that is a different buffer (grid kv_heads x 2)
//   st_gqa_append_f32  the new tokens' keys, rotated, and values into the cache (grid tokens)
//   st_gqa_attend_f32  one block per (query head, token): its rotated query against the visible keys,
//                      an online softmax per warp, the warps merged through shared memory (grid heads x tokens)
// A position id outside the rotary table has no defined result: its token's keys, values and outputs are
// NaN (the host checks everything else before launching; it cannot read device-side ids without a sync).
#include "common.cuh"

// The most head_dim the attend kernel holds in registers: head_dim / 32 elements a lane, up to 8.
#define ST_GQA_MAX_HD 256
#define ST_GQA_LANE_DIMS (ST_GQA_MAX_HD / 32)
// Keys a warp scores at once (independent loads and shuffle chains in flight).
#define ST_GQA_KEYS 4

// Mirrors GqaArgs in src/launch.rs (repr(C)): pointers first, then ints, then the scale.
struct StGqaArgs {
    const float* q;            // [tokens][heads * hd] at a stride of q_stride floats
    const float* k;            // [tokens][kv_heads * hd] at kv_stride
    const float* v;
    const float* cos;          // [rows][hd / 2]
    const float* sin;
    const long long* positions;  // [tokens]: each token's row of cos / sin
    const float* past_k;       // [kv_heads][past_capacity][hd]: copied from when it is not k_cache
    const float* past_v;
    float* k_cache;            // [kv_heads][capacity][hd]
    float* v_cache;
    float* out;                // [tokens][heads * hd]
    int q_stride, kv_stride, rows, tokens, past, capacity, past_capacity, heads, kv_heads, head_dim;
    float scale;
};

__device__ __forceinline__ float st_nan() { return st_bits_to_float(0x7fc00000u); }
__device__ __forceinline__ float st_neg_inf() { return st_bits_to_float(0xff800000u); }

// Element i of `x` (head_dim floats) rotated by the cos / sin row `c`, `s` (head_dim / 2 each).
__device__ __forceinline__ float st_rotate(const float* x, const float* c, const float* s, int i, int half) {
    return i < half ? x[i] * c[i] - x[i + half] * s[i] : x[i] * c[i - half] + x[i - half] * s[i - half];
}

extern "C" __global__ void __launch_bounds__(ST_THREADS) st_gqa_copy_f32(const StGqaArgs a) {
    const int g = blockIdx.x;
    const float* src = (blockIdx.y == 0 ? a.past_k : a.past_v) + (long long)g * a.past_capacity * a.head_dim;
    float* dst = (blockIdx.y == 0 ? a.k_cache : a.v_cache) + (long long)g * a.capacity * a.head_dim;
    const int n = a.past * a.head_dim;
    for (int i = threadIdx.x; i < n; i += ST_THREADS) dst[i] = src[i];
}

extern "C" __global__ void __launch_bounds__(ST_THREADS) st_gqa_append_f32(const StGqaArgs a) {
    const int t = blockIdx.x, hd = a.head_dim, half = hd / 2;
    const long long pos = a.positions[t];
    const bool valid = pos >= 0 && pos < a.rows;
    const float* c = a.cos + (valid ? pos : 0) * half;
    const float* s = a.sin + (valid ? pos : 0) * half;
    const float* kr = a.k + (long long)t * a.kv_stride;
    const float* vr = a.v + (long long)t * a.kv_stride;
    for (int idx = threadIdx.x; idx < a.kv_heads * hd; idx += ST_THREADS) {
        const int g = idx / hd, i = idx % hd;
        const long long at = ((long long)g * a.capacity + a.past + t) * hd + i;
        a.k_cache[at] = valid ? st_rotate(kr + g * hd, c, s, i, half) : st_nan();
        a.v_cache[at] = valid ? vr[idx] : st_nan();
    }
}

extern "C" __global__ void __launch_bounds__(ST_THREADS) st_gqa_attend_f32(const StGqaArgs a) {
    const int h = blockIdx.x, t = blockIdx.y, hd = a.head_dim, half = hd / 2;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (a.heads / a.kv_heads);
    float* out = a.out + (long long)t * a.heads * hd + (long long)h * hd;
    const long long pos = a.positions[t];
    if (pos < 0 || pos >= a.rows) {
        for (int i = threadIdx.x; i < hd; i += ST_THREADS) out[i] = st_nan();
        return;
    }
    const float* qr = a.q + (long long)t * a.q_stride + (long long)h * hd;
    const float* c = a.cos + pos * half;
    const float* s = a.sin + pos * half;
    // This lane's elements lane + 32 j of the rotated, scaled query.
    float q[ST_GQA_LANE_DIMS];
#pragma unroll
    for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) {
        const int i = lane + 32 * j;
        q[j] = i < hd ? st_rotate(qr, c, s, i, half) * a.scale : 0.0f;
    }
    const int n = a.past + t + 1;  // visible keys: causal by token index
    const float* kb = a.k_cache + (long long)g * a.capacity * hd;
    const float* vb = a.v_cache + (long long)g * a.capacity * hd;
    float m = st_neg_inf(), l = 0.0f, acc[ST_GQA_LANE_DIMS];
#pragma unroll
    for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) acc[j] = 0.0f;
    for (int j0 = warp * ST_GQA_KEYS; j0 < n; j0 += ST_WARPS * ST_GQA_KEYS) {
        float d[ST_GQA_KEYS];
#pragma unroll
        for (int u = 0; u < ST_GQA_KEYS; ++u) {
            const int key = j0 + u;
            float partial = 0.0f;
            if (key < n) {
                const float* kk = kb + (long long)key * hd;
#pragma unroll
                for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) {
                    const int i = lane + 32 * j;
                    if (i < hd) partial += q[j] * kk[i];
                }
            }
            d[u] = partial;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < ST_GQA_KEYS; ++u) {
            d[u] = j0 + u < n ? st_warp_sum(d[u]) : st_neg_inf();
            mx = fmaxf(mx, d[u]);
        }
        // j0 < n, so d[0] and mx are finite; the first round's m is -inf and exp gives 0.
        const float keep = expf(m - mx);
        l *= keep;
#pragma unroll
        for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) acc[j] *= keep;
#pragma unroll
        for (int u = 0; u < ST_GQA_KEYS; ++u) {
            const int key = j0 + u;
            if (key < n) {
                const float p = expf(d[u] - mx);
                l += p;
                const float* vv = vb + (long long)key * hd;
#pragma unroll
                for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) {
                    const int i = lane + 32 * j;
                    if (i < hd) acc[j] += p * vv[i];
                }
            }
        }
        m = mx;
    }
    // Merge the warps' partial softmaxes: a warp that saw no key has m = -inf and weighs 0.
    __shared__ float warp_m[ST_WARPS], warp_l[ST_WARPS];
    __shared__ float warp_acc[ST_WARPS][ST_GQA_MAX_HD];
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ST_GQA_LANE_DIMS; ++j) {
        const int i = lane + 32 * j;
        if (i < hd) warp_acc[warp][i] = acc[j];
    }
    __syncthreads();
    float top = warp_m[0];
#pragma unroll
    for (int w = 1; w < ST_WARPS; ++w) top = fmaxf(top, warp_m[w]);
    float weight[ST_WARPS], total = 0.0f;
#pragma unroll
    for (int w = 0; w < ST_WARPS; ++w) {
        weight[w] = expf(warp_m[w] - top);
        total += warp_l[w] * weight[w];
    }
    for (int i = threadIdx.x; i < hd; i += ST_THREADS) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ST_WARPS; ++w) o += warp_acc[w][i] * weight[w];
        out[i] = o / total;
    }
}

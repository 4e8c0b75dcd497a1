// fp8 (E4M3FN) weight-only matmul:
//   W      [N][K] bytes, one E4M3FN value per byte (row-major, HF's nn.Linear layout)
//   scales per channel: [N] (block = 0), or per block: [N][ceil(K / block)] (block a multiple of 16)
//   scales are in the activation type;  W[n][k] = fp8(q) * scale,  Y[m][n] = sum_k A[m][k] * W[n][k]
// Paths as in int4_matmul.cu: st_fp8_gemv_* for M <= 8 (R rows per warp, 16 weights per 16-byte load),
// st_fp8_gemm_* through mma.sync. Rows are read with 16-byte loads when K % 16 == 0, bytewise otherwise.
// NaN codes (0x7F, 0xFF) are not decoded as NaN: the exporter never writes them.
#include "common.cuh"

// E4M3FN -> float exactly: moving the 7 exponent+mantissa bits under a float's exponent field gives the
// value times 2^-120 for normals and subnormals alike; one multiply by 2^120 restores it.
__device__ __forceinline__ float st_fp8(st_u32 byte) {
    return st_bits_to_float(((byte & 0x80u) << 24) | ((byte & 0x7Fu) << 20)) * 1.329227995784916e36f;
}

__device__ __forceinline__ void st_fp8_load16(const st_u8* __restrict__ row, int k0, int k, bool aligned, float out[16]) {
    if (aligned && k0 + 16 <= k) {
        const uint4 v = *reinterpret_cast<const uint4*>(row + k0);
        const st_u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int wi = 0; wi < 4; ++wi)
#pragma unroll
            for (int j = 0; j < 4; ++j) out[4 * wi + j] = st_fp8((words[wi] >> (8 * j)) & 0xFFu);
    } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) out[j] = (k0 + j < k) ? st_fp8(row[k0 + j]) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ float st_fp8_scale(const T* __restrict__ scales, int row, int k0, int k, int block) {
    if (block == 0) return Act<T>::to_f(scales[row]);
    const int k_blocks = (k + block - 1) / block;
    return Act<T>::to_f(scales[(size_t)row * k_blocks + k0 / block]);
}

// Sixteen weights of a row as raw bytes in a uint4: one 16-byte load when aligned and in range, else
// bytewise with zeros (fp8 +0) past k.
__device__ __forceinline__ uint4 st_fp8_chunk(const st_u8* __restrict__ row, int k0, int k, bool aligned) {
    if (aligned && k0 + 16 <= k) return *reinterpret_cast<const uint4*>(row + k0);
    st_u32 words[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int j = 0; j < 16; ++j)
        if (k0 + j < k) words[j / 4] |= (st_u32)row[k0 + j] << (8 * (j % 4));
    uint4 v;
    v.x = words[0];
    v.y = words[1];
    v.z = words[2];
    v.w = words[3];
    return v;
}

template <typename T, int M>
__device__ __forceinline__ void st_fp8_gemv(const T* __restrict__ a, const st_u8* __restrict__ w,
                                            const T* __restrict__ scales, T* __restrict__ y, int m, int n, int k,
                                            int block) {
    // As in the int4 GEMV: R rows per warp share each activation load, R x U loads in flight per lane.
    constexpr int R = ST_GEMV_ROWS(M);
    constexpr int U = 4 / R;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * ST_WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= n) return;  // whole warps leave together; this kernel has no block-wide barrier
    const bool w_aligned = (k % 16) == 0;
    const bool a_aligned = (k % 8) == 0;
    const int chunks = (k + 15) / 16;
    int rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = row0 + r < n ? row0 + r : row0;  // rows past n are not stored

    float acc[M][R];
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[i][r] = 0.0f;

    for (int c0 = lane; c0 < chunks; c0 += 32 * U) {
        uint4 q4[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (c < chunks) q4[u][r] = st_fp8_chunk(w + (size_t)rows[r] * k, 16 * c, k, w_aligned);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < chunks) {
                const int k0 = 16 * c;
                float s[R];
#pragma unroll
                for (int r = 0; r < R; ++r) s[r] = st_fp8_scale<T>(scales, rows[r], k0, k, block);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    float q[R][8];
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const st_u32 lo = h == 0 ? q4[u][r].x : q4[u][r].z;
                        const st_u32 hi = h == 0 ? q4[u][r].y : q4[u][r].w;
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            q[r][j] = st_fp8((lo >> (8 * j)) & 0xFFu);
                            q[r][4 + j] = st_fp8((hi >> (8 * j)) & 0xFFu);
                        }
                    }
#pragma unroll
                    for (int i = 0; i < M; ++i) {
                        if (i < m) {
                            float av[8];
                            st_load8<T>(a + (size_t)i * k, k0 + 8 * h, k, a_aligned, av);
#pragma unroll
                            for (int r = 0; r < R; ++r) {
                                float part = 0.0f;
#pragma unroll
                                for (int j = 0; j < 8; ++j) part = fmaf(av[j], q[r][j], part);
                                acc[i][r] = fmaf(s[r], part, acc[i][r]);
                            }
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const float v = st_warp_sum(acc[i][r]);
            if (lane == 0 && i < m && row0 + r < n) y[(size_t)i * n + row0 + r] = Act<T>::from_f(v);
        }
}

template <typename T>
struct StFp8Loader {
    const st_u8* __restrict__ w;
    const T* __restrict__ scales;
    int n, k, block;

    typedef typename Act<T>::Mma C;
    __device__ __forceinline__ void load(int row, int k0, int half, C* dst) const {
        const int kc = k0 + 16 * half;
        if (row >= n || kc >= k) {
#pragma unroll
            for (int j = 0; j < 16; ++j) dst[j] = Act<C>::from_f(0.0f);
            return;
        }
        float q[16];
        st_fp8_load16(w + (size_t)row * k, kc, k, (k % 16) == 0, q);
        const float s = st_fp8_scale<T>(scales, row, kc, k, block);
#pragma unroll
        for (int j = 0; j < 16; ++j) dst[j] = Act<C>::from_f(q[j] * s);
    }
};

template <typename T>
__device__ __forceinline__ void st_fp8_gemm(const T* __restrict__ a, const st_u8* __restrict__ w,
                                            const T* __restrict__ scales, T* __restrict__ y, int m, int n, int k,
                                            int block) {
    StFp8Loader<T> loader{w, scales, n, k, block};
    st_gemm_tiles<T, StFp8Loader<T>>(a, loader, y, m, n, k);
}

#define ST_FP8_ARGS(T)                                                                                        \
    const T *__restrict__ a, const st_u8 *__restrict__ w, const T *__restrict__ scales, T *__restrict__ y,   \
        int m, int n, int k, int block
#define ST_FP8_GEMV(NAME, T, M)                                                                              \
    extern "C" __global__ void __launch_bounds__(ST_THREADS, ST_MIN_BLOCKS) NAME(ST_FP8_ARGS(T)) {                          \
        st_fp8_gemv<T, M>(a, w, scales, y, m, n, k, block);                                                  \
    }
#define ST_FP8_GEMM(NAME, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(ST_THREADS, ST_MIN_BLOCKS) NAME(ST_FP8_ARGS(T)) {                          \
        st_fp8_gemm<T>(a, w, scales, y, m, n, k, block);                                                     \
    }

ST_FP8_GEMV(st_fp8_gemv_f16_m1, __half, 1)
ST_FP8_GEMV(st_fp8_gemv_f16_m2, __half, 2)
ST_FP8_GEMV(st_fp8_gemv_f16_m4, __half, 4)
ST_FP8_GEMV(st_fp8_gemv_f16_m8, __half, 8)
ST_FP8_GEMV(st_fp8_gemv_bf16_m1, __nv_bfloat16, 1)
ST_FP8_GEMV(st_fp8_gemv_bf16_m2, __nv_bfloat16, 2)
ST_FP8_GEMV(st_fp8_gemv_bf16_m4, __nv_bfloat16, 4)
ST_FP8_GEMV(st_fp8_gemv_bf16_m8, __nv_bfloat16, 8)
ST_FP8_GEMM(st_fp8_gemm_f16, __half)
ST_FP8_GEMM(st_fp8_gemm_bf16, __nv_bfloat16)
ST_FP8_GEMV(st_fp8_gemv_f32_m1, float, 1)
ST_FP8_GEMV(st_fp8_gemv_f32_m2, float, 2)
ST_FP8_GEMV(st_fp8_gemv_f32_m4, float, 4)
ST_FP8_GEMV(st_fp8_gemv_f32_m8, float, 8)
ST_FP8_GEMM(st_fp8_gemm_f32, float)

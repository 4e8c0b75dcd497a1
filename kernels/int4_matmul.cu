// int4 weight-only matmul in ORT's MatMulNBits layout (bits = 4):
//   B      [N][k_blocks][block / 2] bytes, k_blocks = ceil(K / block); byte i of a block holds element 2i in
//          its low nibble and element 2i + 1 in its high nibble (rows padded to whole blocks)
//   scales [N][k_blocks] in the activation type
//   zero_points (optional) [N][ceil(k_blocks / 2)] bytes, block 2j in the low nibble; absent means 8
//   W[n][k] = (q - zero_point) * scale,   Y[m][n] = sum_k A[m][k] * W[n][k]
// block is 32, 64 or 128 (any multiple of 32 works), so every 16-byte load holds 32 weights of one block.
//
// Two paths, picked by the launcher from M:
//   st_int4_gemv_*: decode, M <= 8. Each warp owns ST_GEMV_ROWS(M) weight rows; each lane streams 16-byte
//                   chunks of them (4 in flight), dequantizes in registers, converts each group of 8
//                   activations once for all its rows, keeps M x R fp32 partial sums; warp shuffles end it.
//   st_int4_gemm_*: prefill. 64 x 64 tiles through mma.sync (common.cuh); the W tile is dequantized to the
//                   activation type in shared memory.
#include "common.cuh"

// (q - z) as a float without an int->float conversion: 0x4B000000 | q is the float 2^23 + q.
__device__ __forceinline__ float st_nib(st_u32 word, int shift, float z_biased) {
    return st_bits_to_float(0x4B000000u | ((word >> shift) & 0xFu)) - z_biased;
}

__device__ __forceinline__ float st_int4_zero(const st_u8* __restrict__ zrow, int blk) {
    const float z = zrow ? (float)((zrow[blk >> 1] >> ((blk & 1) * 4)) & 0xF) : 8.0f;
    return 8388608.0f + z;
}

template <typename T, int M>
__device__ __forceinline__ void st_int4_gemv(const T* __restrict__ a, const st_u8* __restrict__ b,
                                             const T* __restrict__ scales, const st_u8* __restrict__ zp,
                                             T* __restrict__ y, int m, int n, int k, int block) {
    // R weight rows per warp share every activation load and conversion; R x U 16-byte weight loads are
    // in flight per lane.
    constexpr int R = ST_GEMV_ROWS(M);
    constexpr int U = 4 / R;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * ST_WARPS + (threadIdx.x >> 5)) * R;
    if (row0 >= n) return;  // whole warps leave together; this kernel has no block-wide barrier
    const int k_blocks = (k + block - 1) / block;
    const int chunks = k_blocks * block / 32;
    const bool aligned = (k % 8) == 0;
    const uint4* __restrict__ wrow[R];
    const T* __restrict__ srow[R];
    const st_u8* __restrict__ zrow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = row0 + r < n ? row0 + r : row0;  // rows past n repeat row0 and are not stored
        wrow[r] = reinterpret_cast<const uint4*>(b + (size_t)row * k_blocks * (block / 2));
        srow[r] = scales + (size_t)row * k_blocks;
        zrow[r] = zp ? zp + (size_t)row * ((k_blocks + 1) / 2) : nullptr;
    }

    float acc[M][R];
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[i][r] = 0.0f;

    for (int c0 = lane; c0 < chunks; c0 += 32 * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
#pragma unroll
            for (int r = 0; r < R; ++r)
                if (c < chunks) w[u][r] = wrow[r][c];
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < chunks) {
                const int k0 = c * 32;
                const int blk = k0 / block;
                float s[R], zb[R];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    s[r] = Act<T>::to_f(srow[r][blk]);
                    zb[r] = st_int4_zero(zrow[r], blk);
                }
                // One 32-bit word (8 weights per row) at a time keeps register pressure down.
#pragma unroll
                for (int wi = 0; wi < 4; ++wi) {
                    float q[R][8];
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const st_u32 word = wi == 0 ? w[u][r].x : wi == 1 ? w[u][r].y : wi == 2 ? w[u][r].z : w[u][r].w;
#pragma unroll
                        for (int j = 0; j < 8; ++j) q[r][j] = st_nib(word, 4 * j, zb[r]);
                    }
#pragma unroll
                    for (int i = 0; i < M; ++i) {
                        if (i < m) {
                            float av[8];
                            st_load8<T>(a + (size_t)i * k, k0 + 8 * wi, k, aligned, av);
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

// Fills 16 dequantized weights of row `row`, columns k0 + 16 * half ..., into the shared W tile.
template <typename T>
struct StInt4Loader {
    const st_u8* __restrict__ b;
    const T* __restrict__ scales;
    const st_u8* __restrict__ zp;
    int n, k, block;

    typedef typename Act<T>::Mma C;
    __device__ __forceinline__ void load(int row, int k0, int half, C* dst) const {
        const int kc = k0 + 16 * half;
        if (row >= n || kc >= k) {
#pragma unroll
            for (int j = 0; j < 16; ++j) dst[j] = Act<C>::from_f(0.0f);
            return;
        }
        const int k_blocks = (k + block - 1) / block;
        const int blk = kc / block;
        const uint2 v = *reinterpret_cast<const uint2*>(b + (size_t)row * k_blocks * (block / 2) + kc / 2);
        const float s = Act<T>::to_f(scales[(size_t)row * k_blocks + blk]);
        const float zb = st_int4_zero(zp ? zp + (size_t)row * ((k_blocks + 1) / 2) : nullptr, blk);
        const st_u32 words[2] = {v.x, v.y};
#pragma unroll
        for (int wi = 0; wi < 2; ++wi)
#pragma unroll
            for (int j = 0; j < 8; ++j) dst[8 * wi + j] = Act<C>::from_f(st_nib(words[wi], 4 * j, zb) * s);
    }
};

template <typename T>
__device__ __forceinline__ void st_int4_gemm(const T* __restrict__ a, const st_u8* __restrict__ b,
                                             const T* __restrict__ scales, const st_u8* __restrict__ zp,
                                             T* __restrict__ y, int m, int n, int k, int block) {
    StInt4Loader<T> loader{b, scales, zp, n, k, block};
    st_gemm_tiles<T, StInt4Loader<T>>(a, loader, y, m, n, k);
}

// Exported entry points (extern "C": NVRTC and the host emulation find them by name).
#define ST_INT4_ARGS(T)                                                                                       \
    const T *__restrict__ a, const st_u8 *__restrict__ b, const T *__restrict__ scales,                     \
        const st_u8 *__restrict__ zp, T *__restrict__ y, int m, int n, int k, int block
#define ST_INT4_GEMV(NAME, T, M)                                                                             \
    extern "C" __global__ void __launch_bounds__(ST_THREADS, ST_MIN_BLOCKS) NAME(ST_INT4_ARGS(T)) {                         \
        st_int4_gemv<T, M>(a, b, scales, zp, y, m, n, k, block);                                             \
    }
#define ST_INT4_GEMM(NAME, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(ST_THREADS, ST_MIN_BLOCKS) NAME(ST_INT4_ARGS(T)) {                         \
        st_int4_gemm<T>(a, b, scales, zp, y, m, n, k, block);                                                \
    }

ST_INT4_GEMV(st_int4_gemv_f16_m1, __half, 1)
ST_INT4_GEMV(st_int4_gemv_f16_m2, __half, 2)
ST_INT4_GEMV(st_int4_gemv_f16_m4, __half, 4)
ST_INT4_GEMV(st_int4_gemv_f16_m8, __half, 8)
ST_INT4_GEMV(st_int4_gemv_bf16_m1, __nv_bfloat16, 1)
ST_INT4_GEMV(st_int4_gemv_bf16_m2, __nv_bfloat16, 2)
ST_INT4_GEMV(st_int4_gemv_bf16_m4, __nv_bfloat16, 4)
ST_INT4_GEMV(st_int4_gemv_bf16_m8, __nv_bfloat16, 8)
ST_INT4_GEMM(st_int4_gemm_f16, __half)
ST_INT4_GEMM(st_int4_gemm_bf16, __nv_bfloat16)
ST_INT4_GEMV(st_int4_gemv_f32_m1, float, 1)
ST_INT4_GEMV(st_int4_gemv_f32_m2, float, 2)
ST_INT4_GEMV(st_int4_gemv_f32_m4, float, 4)
ST_INT4_GEMV(st_int4_gemv_f32_m8, float, 8)
ST_INT4_GEMM(st_int4_gemm_f32, float)

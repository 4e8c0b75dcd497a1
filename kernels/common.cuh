// Shared device helpers for the weight-only dequant-matmul kernels (int4_matmul.cu, fp8_matmul.cu).
//
// Every kernel computes Y[m][n] = sum_k A[m][k] * W[n][k], with A (activations) in fp16 or bf16 row-major
// [M][K], W a quantized weight stored row by row ([N][K], the layout of HF's nn.Linear and of ORT's
// MatMulNBits), Y in A's type [M][N], fp32 accumulation.
//
// The same source compiles three ways: NVRTC for the GPU (__CUDACC_RTC__), nvcc (__CUDACC__), and as plain
// C++ for the host-emulation tests (ST_HOST_SHIM, see host/shim.hpp), which run every thread of a block,
// the warp shuffles and the mma.sync fragment exchange on the CPU. Keep everything the kernels use inside
// the set the shim emulates: threadIdx/blockIdx, __shared__ arrays, __syncthreads, __shfl_xor_sync and
// st_mma_m16n8k16 below.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
typedef unsigned char st_u8;
typedef unsigned int st_u32;
#else
#include <cstdint>
typedef uint8_t st_u8;
typedef uint32_t st_u32;
#endif

// Threads per block of every kernel (4 warps); the Rust launcher uses the same constant.
#define ST_THREADS 128
#define ST_WARPS (ST_THREADS / 32)
// Weight rows per warp in the GEMVs, by activation-row tile M (launch.rs mirrors it): more rows share each
// activation load; fewer for larger M, whose M x R accumulators need the registers.
#define ST_GEMV_ROWS(M) ((M) <= 2 ? 4 : 2)
// __launch_bounds__ minimum blocks per SM. With only a thread limit ptxas aims at full occupancy and spills
// the 8-row GEMV's accumulators; 4 blocks (512 threads, <= 128 registers) keep everything in registers.
#define ST_MIN_BLOCKS 4

// GEMM tile: 64 x 64 outputs per block, K consumed 32 at a time, 2 x 2 warps of 32 x 32 outputs each.
#define ST_BM 64
#define ST_BN 64
#define ST_BK 32
// Shared-memory row stride in elements: 8 elements (16 bytes) of padding keep 16-byte stores aligned and
// make the fragment loads of the 8 row groups hit 8 different banks.
#define ST_SK (ST_BK + 8)

// Activation element types: fp16, bf16, or f32 (the runtime's f32 graphs). to_f/from_f round to nearest
// even, as the hardware conversions do. `Mma` is the tensor-core input type of the GEMM path: the type
// itself for fp16/bf16; bf16 for f32 activations (f32's range, where fp16 would overflow above 65504).
template <typename T> struct Act;
template <> struct Act<__half> {
    typedef __half Mma;
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
    static constexpr bool is_bf16 = false;
};
template <> struct Act<__nv_bfloat16> {
    typedef __nv_bfloat16 Mma;
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
    static constexpr bool is_bf16 = true;
};
template <> struct Act<float> {
    typedef __nv_bfloat16 Mma;
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
    static constexpr bool is_bf16 = false;
};

// Bit casts without <cstring>: NVRTC has no standard library.
__device__ __forceinline__ float st_bits_to_float(st_u32 u) {
    union { st_u32 u; float f; } c;
    c.u = u;
    return c.f;
}

__device__ __forceinline__ float st_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Eight activations starting at column k0 of row `row` as floats; columns at or past k read as zero.
// 16-byte loads are used when the whole group is in range and aligned (k % 8 == 0).
template <typename T>
__device__ __forceinline__ void st_load8(const T* __restrict__ row, int k0, int k, bool aligned, float out[8]) {
    if (aligned && k0 + 8 <= k) {
        constexpr int per = 16 / sizeof(T);
#pragma unroll
        for (int v = 0; v < 8 / per; ++v) {
            uint4 q = reinterpret_cast<const uint4*>(row + k0)[v];
            const T* h = reinterpret_cast<const T*>(&q);
#pragma unroll
            for (int j = 0; j < per; ++j) out[v * per + j] = Act<T>::to_f(h[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = (k0 + j < k) ? Act<T>::to_f(row[k0 + j]) : 0.0f;
    }
}

// One tensor-core step: D = A(16x16, row) * B(16x8, col) + D, fp32 accumulate, fragments as in the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"): lane = 4 * group + tig;
// a[0]: A[group][2tig..2tig+1], a[1]: A[group+8][2tig..], a[2]: A[group][2tig+8..], a[3]: A[group+8][2tig+8..];
// b[0]: B[2tig..2tig+1][group], b[1]: B[2tig+8..2tig+9][group];
// d[0..1]: D[group][2tig..2tig+1], d[2..3]: D[group+8][2tig..2tig+1].
#if !defined(ST_HOST_SHIM)
template <typename T>
__device__ __forceinline__ void st_mma_m16n8k16(float d[4], const st_u32 a[4], const st_u32 b[2]) {
    if (Act<T>::is_bf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}
#endif

// ---- The tiled GEMM shared by both weight formats -------------------------------------------------------
//
// Per block: a 64 x 32 tile of A and a 64 (N) x 32 (K) tile of dequantized W in shared memory, then each
// warp runs 2 (M) x 4 (N) mma tiles per 16-wide K step. The weight format only decides how a thread fills
// its half row of the W tile: `Loader::load(n_row, k0, half, dst16)` writes 16 dequantized values (in the
// tensor-core type) for
// columns k0 + 16 * half ... + 15 of weight row n_row (zeros for rows past N or columns past K).

// Loads this thread's share of the A tile (row t / 2, sixteen columns starting at 16 * (t % 2)), converted
// to the tensor-core type C.
template <typename T, typename C>
__device__ __forceinline__ void st_load_a_tile(C (*as)[ST_SK], const T* __restrict__ a, int m, int k, int m0, int k0) {
    const int t = threadIdx.x;
    const int r = t >> 1;
    const int c = (t & 1) * 16;
    const bool aligned = (k % 8) == 0;
    float v[8];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        if (m0 + r < m) {
            st_load8<T>(a + (size_t)(m0 + r) * k, k0 + c + 8 * g, k, aligned, v);
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) as[r][c + 8 * g + j] = Act<C>::from_f(v[j]);
    }
}

template <typename T, typename Loader>
__device__ __forceinline__ void st_gemm_tiles(const T* __restrict__ a, const Loader& w, T* __restrict__ y, int m,
                                              int n, int k) {
    typedef typename Act<T>::Mma C;
    __shared__ __align__(16) C as[ST_BM][ST_SK];
    __shared__ __align__(16) C bs[ST_BN][ST_SK];
    const int t = threadIdx.x;
    const int lane = t & 31;
    const int warp = t >> 5;
    const int group = lane >> 2;
    const int tig = lane & 3;
    const int wm = (warp >> 1) * 32;
    const int wn = (warp & 1) * 32;
    const int m0 = blockIdx.y * ST_BM;
    const int n0 = blockIdx.x * ST_BN;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += ST_BK) {
        st_load_a_tile<T, C>(as, a, m, k, m0, k0);
        w.load(n0 + (t >> 1), k0, t & 1, &bs[t >> 1][(t & 1) * 16]);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < ST_BK; kk += 16) {
            st_u32 af[2][4];
            st_u32 bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm + i * 16 + group;
                af[i][0] = *reinterpret_cast<const st_u32*>(&as[r][kk + 2 * tig]);
                af[i][1] = *reinterpret_cast<const st_u32*>(&as[r + 8][kk + 2 * tig]);
                af[i][2] = *reinterpret_cast<const st_u32*>(&as[r][kk + 2 * tig + 8]);
                af[i][3] = *reinterpret_cast<const st_u32*>(&as[r + 8][kk + 2 * tig + 8]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = wn + j * 8 + group;
                bf[j][0] = *reinterpret_cast<const st_u32*>(&bs[c][kk + 2 * tig]);
                bf[j][1] = *reinterpret_cast<const st_u32*>(&bs[c][kk + 2 * tig + 8]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) st_mma_m16n8k16<C>(acc[i][j], af[i], bf[j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = m0 + wm + i * 16 + group + (e >> 1) * 8;
                const int c = n0 + wn + j * 8 + 2 * tig + (e & 1);
                if (r < m && c < n) y[(size_t)r * n + c] = Act<T>::from_f(acc[i][j][e]);
            }
}

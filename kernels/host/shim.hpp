// Host emulation of the CUDA subset the kernels use, so the exact .cu sources run on a CPU in tests.
//
// A launch runs the blocks one after another; each block runs blockDim.x real threads, so __syncthreads is a
// barrier across them and every thread keeps its own registers. __shared__ arrays become function-level
// statics (one copy, valid because blocks run one at a time and launches are serialized). A warp shuffle
// and an mma.sync go through a per-warp exchange buffer between two warp barriers: every lane publishes its
// value or fragment, then reads what the instruction's semantics give it. The mma fragment layout is the
// PTX ISA's for m16n8k16 with .f16/.bf16 inputs and .f32 accumulators, so a kernel that indexes its
// fragments wrongly gives wrong results here just as on the GPU.
#pragma once

#define ST_HOST_SHIM 1

#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    uint32_t x, y, z, w;
};
struct uint2 {
    uint32_t x, y;
};

// fp16 and bf16 storage types with round-to-nearest-even conversions (the hardware's cvt.rn).
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __half2float(__half h) { return (float)std::bit_cast<_Float16>(h.bits); }
inline __half __float2half_rn(float f) { return __half{std::bit_cast<uint16_t>((_Float16)f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return std::bit_cast<float>((uint32_t)h.bits << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;

namespace st_shim {

struct Block {
    explicit Block(unsigned threads) : block_barrier(threads), exchange(threads * 10) {
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(std::make_unique<std::barrier<>>(32));
    }
    std::barrier<> block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    std::vector<uint32_t> exchange;  // 10 words per thread: 4 A + 2 B fragment registers, or one shuffle value
};

inline Block* current = nullptr;

inline std::mutex& launch_lock() {
    static std::mutex m;
    return m;
}

// Runs `kernel` over grid x block threads (1-D blocks, 2-D grids), blocks in order.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    std::lock_guard<std::mutex> guard(launch_lock());
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3{bx, by, 0};
            Block state(block.x);
            current = &state;
            std::vector<std::thread> threads;
            threads.reserve(block.x);
            for (unsigned t = 0; t < block.x; ++t)
                threads.emplace_back([t, &kernel] {
                    threadIdx = dim3{t, 0, 0};
                    kernel();
                });
            for (auto& th : threads) th.join();
            current = nullptr;
        }
}

inline std::barrier<>& warp_barrier() { return *current->warp_barriers[threadIdx.x / 32]; }
inline uint32_t* slot(unsigned thread) { return &current->exchange[thread * 10]; }

}  // namespace st_shim

inline void __syncthreads() { st_shim::current->block_barrier.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned /*mask: full warps only*/, float v, int lane_mask) {
    const unsigned t = threadIdx.x;
    const unsigned base = t & ~31u;
    std::memcpy(st_shim::slot(t), &v, 4);
    st_shim::warp_barrier().arrive_and_wait();
    float r;
    std::memcpy(&r, st_shim::slot(base + ((t & 31u) ^ (unsigned)lane_mask)), 4);
    st_shim::warp_barrier().arrive_and_wait();
    return r;
}

template <typename T> struct Act;

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: each lane publishes its A and B fragments, then computes
// its own four accumulators from the whole warp's fragments.
template <typename T>
inline void st_mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const unsigned t = threadIdx.x;
    const unsigned base = t & ~31u;
    const unsigned lane = t & 31u;
    uint32_t* mine = st_shim::slot(t);
    std::memcpy(mine, a, 16);
    std::memcpy(mine + 4, b, 8);
    st_shim::warp_barrier().arrive_and_wait();
    auto element = [](uint32_t reg, unsigned half) {
        const T v{(uint16_t)(half ? reg >> 16 : reg & 0xffffu)};
        return Act<T>::to_f(v);
    };
    // A[r][c] lives in lane 4 * (r % 8) + (c % 8) / 2, register (r >= 8) + 2 * (c >= 8), half c % 2.
    auto a_at = [&](unsigned r, unsigned c) {
        const uint32_t* s = st_shim::slot(base + 4 * (r % 8) + (c % 8) / 2);
        return element(s[(r >= 8 ? 1 : 0) + (c >= 8 ? 2 : 0)], c % 2);
    };
    // B[k][n] lives in lane 4 * n + (k % 8) / 2, register k >= 8, half k % 2.
    auto b_at = [&](unsigned kk, unsigned n) {
        const uint32_t* s = st_shim::slot(base + 4 * n + (kk % 8) / 2);
        return element(s[4 + (kk >= 8 ? 1 : 0)], kk % 2);
    };
    const unsigned group = lane / 4, tig = lane % 4;
    float out[4];
    for (unsigned e = 0; e < 4; ++e) {
        const unsigned r = group + (e >= 2 ? 8 : 0);
        const unsigned c = 2 * tig + (e & 1);
        float s = d[e];
        for (unsigned kk = 0; kk < 16; ++kk) s = std::fma(a_at(r, kk), b_at(kk, c), s);
        out[e] = s;
    }
    st_shim::warp_barrier().arrive_and_wait();
    std::memcpy(d, out, 16);
}

// The exact kernel sources compiled for the host on top of shim.hpp, with one C entry point per kernel
// family for the Rust tests (st_kernels::host). Names and launch shapes come from the Rust launcher, the
// same code that launches the kernels on a GPU.
#include "shim.hpp"

#include "../int4_matmul.cu"
#include "../fp8_matmul.cu"
#include "../attention.cu"

#include <cstring>
#include <string_view>

namespace {

using Int4Fn = void (*)(const void*, const uint8_t*, const void*, const uint8_t*, void*, int, int, int, int);
using Fp8Fn = void (*)(const void*, const uint8_t*, const void*, void*, int, int, int, int);

template <typename T>
Int4Fn int4_fn(void (*f)(const T*, const st_u8*, const T*, const st_u8*, T*, int, int, int, int)) {
    return reinterpret_cast<Int4Fn>(f);
}
template <typename T>
Fp8Fn fp8_fn(void (*f)(const T*, const st_u8*, const T*, T*, int, int, int, int)) {
    return reinterpret_cast<Fp8Fn>(f);
}

#define ST_ENTRY(name, make) {#name, make(name)}

struct Int4Entry { std::string_view name; Int4Fn fn; };
struct Fp8Entry { std::string_view name; Fp8Fn fn; };

const Int4Entry INT4[] = {
    ST_ENTRY(st_int4_gemv_f16_m1, int4_fn), ST_ENTRY(st_int4_gemv_f16_m2, int4_fn),
    ST_ENTRY(st_int4_gemv_f16_m4, int4_fn), ST_ENTRY(st_int4_gemv_f16_m8, int4_fn),
    ST_ENTRY(st_int4_gemv_bf16_m1, int4_fn), ST_ENTRY(st_int4_gemv_bf16_m2, int4_fn),
    ST_ENTRY(st_int4_gemv_bf16_m4, int4_fn), ST_ENTRY(st_int4_gemv_bf16_m8, int4_fn),
    ST_ENTRY(st_int4_gemm_f16, int4_fn), ST_ENTRY(st_int4_gemm_bf16, int4_fn),
    ST_ENTRY(st_int4_gemv_f32_m1, int4_fn), ST_ENTRY(st_int4_gemv_f32_m2, int4_fn),
    ST_ENTRY(st_int4_gemv_f32_m4, int4_fn), ST_ENTRY(st_int4_gemv_f32_m8, int4_fn),
    ST_ENTRY(st_int4_gemm_f32, int4_fn),
};
const Fp8Entry FP8[] = {
    ST_ENTRY(st_fp8_gemv_f16_m1, fp8_fn), ST_ENTRY(st_fp8_gemv_f16_m2, fp8_fn),
    ST_ENTRY(st_fp8_gemv_f16_m4, fp8_fn), ST_ENTRY(st_fp8_gemv_f16_m8, fp8_fn),
    ST_ENTRY(st_fp8_gemv_bf16_m1, fp8_fn), ST_ENTRY(st_fp8_gemv_bf16_m2, fp8_fn),
    ST_ENTRY(st_fp8_gemv_bf16_m4, fp8_fn), ST_ENTRY(st_fp8_gemv_bf16_m8, fp8_fn),
    ST_ENTRY(st_fp8_gemm_f16, fp8_fn), ST_ENTRY(st_fp8_gemm_bf16, fp8_fn),
    ST_ENTRY(st_fp8_gemv_f32_m1, fp8_fn), ST_ENTRY(st_fp8_gemv_f32_m2, fp8_fn),
    ST_ENTRY(st_fp8_gemv_f32_m4, fp8_fn), ST_ENTRY(st_fp8_gemv_f32_m8, fp8_fn),
    ST_ENTRY(st_fp8_gemm_f32, fp8_fn),
};

}  // namespace

// Returns 0 on success, -1 for an unknown kernel name.
extern "C" int st_host_launch_int4(const char* name, unsigned gx, unsigned gy, unsigned threads, const void* a,
                                   const uint8_t* b, const void* scales, const uint8_t* zp, void* y, int m, int n,
                                   int k, int block) {
    for (const auto& e : INT4)
        if (e.name == name) {
            st_shim::launch(dim3{gx, gy, 1}, dim3{threads, 1, 1}, [&] { e.fn(a, b, scales, zp, y, m, n, k, block); });
            return 0;
        }
    return -1;
}

extern "C" int st_host_launch_fp8(const char* name, unsigned gx, unsigned gy, unsigned threads, const void* a,
                                  const uint8_t* w, const void* scales, void* y, int m, int n, int k, int block) {
    for (const auto& e : FP8)
        if (e.name == name) {
            st_shim::launch(dim3{gx, gy, 1}, dim3{threads, 1, 1}, [&] { e.fn(a, w, scales, y, m, n, k, block); });
            return 0;
        }
    return -1;
}

extern "C" int st_host_launch_gqa(const char* name, unsigned gx, unsigned gy, unsigned threads,
                                  const StGqaArgs* args) {
    void (*fn)(const StGqaArgs) = nullptr;
    const std::string_view n = name;
    if (n == "st_gqa_copy_f32") fn = st_gqa_copy_f32;
    if (n == "st_gqa_append_f32") fn = st_gqa_append_f32;
    if (n == "st_gqa_attend_f32") fn = st_gqa_attend_f32;
    if (fn == nullptr) return -1;
    const StGqaArgs a = *args;
    st_shim::launch(dim3{gx, gy, 1}, dim3{threads, 1, 1}, [&] { fn(a); });
    return 0;
}

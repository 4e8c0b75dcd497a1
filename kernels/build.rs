//! Compiles the host emulation of the CUDA kernels (host/emulate.cpp includes the exact .cu sources) so that
//! tests run them on the CPU. The GPU build never happens here: NVRTC compiles the same sources at first use.
fn main() {
    for f in ["common.cuh", "int4_matmul.cu", "fp8_matmul.cu", "attention.cu", "host/shim.hpp", "host/emulate.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("host/emulate.cpp")
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(true)
        .compile("st_kernels_host");
}

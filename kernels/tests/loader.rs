//! The launcher without a GPU: absent libraries are errors (cudarc itself would panic), kernel choice and
//! grids per shape, and the cache key.

use st_kernels::Error;
use st_kernels::cuda::{self, Cuda};
use st_kernels::launch::{Op, kernel_names, plan, plan_gemm};
use st_kernels::{Dtype, source};

#[test]
fn no_driver_is_a_clear_error() {
    if cuda::driver_present() {
        eprintln!("a CUDA driver is installed here: nothing to check");
        return;
    }
    let err = Cuda::new(0, None).err().expect("no driver, so no device");
    assert!(matches!(err, Error::NoDriver), "{err}");
    assert!(err.to_string().contains("libcuda.so"), "{err}");
}

#[test]
fn no_nvrtc_is_a_clear_error() {
    if cuda::nvrtc_present() {
        eprintln!("NVRTC is loadable here: nothing to check");
        return;
    }
    let err = cuda::compile(Op::Int4, "sm_90").unwrap_err();
    assert!(matches!(err, Error::NoNvrtc), "{err}");
    assert!(err.to_string().contains("nvidia-cuda-nvrtc-cu12"), "{err}");
}

#[test]
fn plans_pick_gemv_tiles_and_gemm_grids() {
    let p = plan(Op::Int4, Dtype::F16, 1, 3584);
    assert_eq!((p.kernel.as_str(), p.grid, p.threads), ("st_int4_gemv_f16_m1", (224, 1), 128)); // 16 rows per block
    let p = plan(Op::Fp8, Dtype::Bf16, 3, 67);
    assert_eq!((p.kernel.as_str(), p.grid, p.max_m), ("st_fp8_gemv_bf16_m4", (9, 1), 4)); // 8 rows per block
    let p = plan(Op::Int4, Dtype::F32, 9, 130);
    assert_eq!((p.kernel.as_str(), p.grid), ("st_int4_gemm_f32", (3, 1)));
    let p = plan(Op::Fp8, Dtype::F16, 512, 152064);
    assert_eq!(p.grid, (2376, 8));
    assert!(plan_gemm(Op::Int4, Dtype::F16, 2, 5).covers(2, 5));
    assert!(!plan(Op::Int4, Dtype::F16, 2, 5).covers(3, 5));
    // Every planned kernel exists in the sources.
    for op in Op::ALL {
        let program = source::program(op);
        for name in kernel_names(op) {
            let defined = program.contains(&format!("({name},")) || program.contains(&format!(" {name}(const"));
            assert!(defined, "{name} is not defined in {}", source::file_name(op));
        }
    }
}

#[test]
fn cache_key_covers_source_arch_and_nvrtc_version() {
    let p = source::program(Op::Int4);
    let k = source::cache_key(&p, &["sm_90", "12.9"]);
    assert_eq!(k, source::cache_key(&p, &["sm_90", "12.9"]));
    assert_ne!(k, source::cache_key(&p, &["sm_89", "12.9"]));
    assert_ne!(k, source::cache_key(&p, &["sm_90", "13.0"]));
    assert_ne!(k, source::cache_key(&format!("{p} "), &["sm_90", "12.9"]));
    assert!(!p.contains("#include \"common.cuh\""), "the program is self-contained");
}

//! `st doctor [--ort-lib PATH]`: which ONNX Runtime library `st` finds, and whether it loads; which builds
//! st's CPU kernels run; what a GPU run would find (ORT's CUDA provider library beside the ORT library, the
//! NVIDIA driver, NVRTC for st's CUDA kernels).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// libonnxruntime.so.1.31.1 to use (else ORT_DYLIB_PATH, else the project venv).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let lib = &crate::engine::init_ort(args.ort_lib.as_deref())?.library;
    println!("onnxruntime   {} (found by {})", lib.path.display(), lib.found_by);
    println!("build         {}", crate::engine::ort_lib::build_info());
    crate::engine::ops::apply_cpu_isa_var()?;
    println!("cpu kernels   {}", crate::engine::ops::cpu_builds());
    println!("gpu           {}", gpu_report(&lib.path));
    Ok(())
}

/// What `--device cuda` needs beside the ORT library: its CUDA provider library, the NVIDIA driver, and NVRTC
/// (st's CUDA kernels are compiled at first use).
fn gpu_report(ort_lib: &std::path::Path) -> String {
    let found = |yes: bool| if yes { "found" } else { "not found" };
    let provider = crate::engine::Device::Cuda { device_id: 0 }.provider_library().unwrap_or_default();
    let beside = ort_lib.parent().is_some_and(|d| d.join(provider).is_file());
    let nvrtc = st_kernels::cuda::nvrtc_version().unwrap_or_else(|_| "not found".into());
    format!(
        "{provider} {} beside it; NVIDIA driver {}; NVRTC for st's CUDA kernels {nvrtc}",
        found(beside),
        found(st_kernels::cuda::driver_present())
    )
}

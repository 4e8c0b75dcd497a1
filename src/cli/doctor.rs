//! `st doctor [--ort-lib PATH]`: which ONNX Runtime library `st` finds, and whether it loads.

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
    Ok(())
}

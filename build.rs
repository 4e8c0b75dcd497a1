// With the `train` feature, libtorch lives in the Python wheel's torch/lib: record it as the
// binaries' run-time search path (torch-sys passes it as DEP_TCH_LIBTORCH_LIB), so `st finetune`
// runs without LD_LIBRARY_PATH. Without the feature this does nothing.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

// libtorch lives in the Python wheel's torch/lib: record it as the run-time search path of this
// crate's tests and examples (torch-sys passes the directory as DEP_TCH_LIBTORCH_LIB), so they
// run without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

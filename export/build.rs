//! Compile the vendored ONNX protobuf schema to Rust types with prost (protoc from the
//! protoc-bin-vendored crate: nothing is downloaded or assumed installed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded here; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    prost_build::Config::new().compile_protos(&["proto/onnx.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    Ok(())
}

//! The CUDA sources, embedded in the binary, and the text NVRTC compiles for each op.

use crate::launch::Op;
use sha2::{Digest, Sha256};

pub const COMMON: &str = include_str!("../common.cuh");
pub const INT4: &str = include_str!("../int4_matmul.cu");
pub const FP8: &str = include_str!("../fp8_matmul.cu");
pub const ATTENTION: &str = include_str!("../attention.cu");

/// The file name of `op`'s source.
pub fn file_name(op: Op) -> &'static str {
    match op {
        Op::Int4 => "int4_matmul.cu",
        Op::Fp8 => "fp8_matmul.cu",
        Op::Attention => "attention.cu",
    }
}

/// One self-contained program per op: common.cuh pasted where the .cu includes it (NVRTC gets no file
/// system access to our headers; CUDA's own headers come from the include path).
pub fn program(op: Op) -> String {
    let body = match op {
        Op::Int4 => INT4,
        Op::Fp8 => FP8,
        Op::Attention => ATTENTION,
    };
    body.replace("#include \"common.cuh\"", COMMON)
}

/// Hex SHA-256 of the program text plus whatever else decides the binary (architecture, NVRTC version,
/// options): the kernel cache key.
pub fn cache_key(program: &str, extra: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(program.as_bytes());
    for e in extra {
        h.update([0u8]);
        h.update(e.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

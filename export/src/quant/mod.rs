//! Weight quantizers. Each is a pure function over a row-major [N, K] f32 matrix (HF's
//! [out, in] linear weight) with a matching dequantizer, so tests and the Python oracle can
//! check the graph against the reference run on exactly the dequantized weights.

pub mod fp8;
pub mod nbits;

//! The value types every graph builder and the export driver share — the numeric precision of a
//! part, the decoder's attention form and the execution provider the graphs are written for — kept apart so that the builders
//! (`layers`, `text`, `vision`) and the driver (`writer`) both look down to them, never at each other.

/// The execution provider the graphs are written for. `cpu` and `tensorrt` get MatMulNBits for
/// int4/int8 and DequantizeLinear→Gemm for fp8 (the Q/DQ form TensorRT fuses); `cuda` gets st's
/// fused ops `ai.st.MatMulInt4` / `ai.st.MatMulFp8` (kernels/), which the runtime registers and
/// which also run on ORT's CPU provider (weights dequantized inside the matmul, never folded to f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    #[default]
    Cpu,
    Cuda,
    TensorRt,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
            Target::TensorRt => "tensorrt",
        })
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Target::Cpu),
            "cuda" => Ok(Target::Cuda),
            "tensorrt" => Ok(Target::TensorRt),
            other => Err(format!("unknown target {other:?} (cpu, cuda, tensorrt)")),
        }
    }
}

/// Numeric precision of the exported linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Int4,
    /// MatMulNBits with 8 bits; used for lm_head.
    Int8,
    Fp8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int4 => "int4",
            Precision::Int8 => "int8",
            Precision::Fp8 => "fp8",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int4" => Ok(Precision::Int4),
            "int8" => Ok(Precision::Int8),
            "fp8" => Ok(Precision::Fp8),
            other => Err(format!("unknown precision {other:?} (fp32, fp16, int4, int8, fp8)")),
        }
    }
}

/// How the decoder computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attention {
    /// Standard ONNX ops: `attention_bias` input, present = Concat(past, new) (copies the cache
    /// each step). Runs on every provider.
    #[default]
    Standard,
    /// `com.microsoft.GroupQueryAttention` (do_rotary 0: M-RoPE is applied before it): inputs
    /// `seqlens_k` i32 [b] (total length − 1) and `total_sequence_length` i32 scalar instead of
    /// `attention_bias`; causal by token index inside the op. When past and present are bound
    /// to the same buffer (past sized to the maximum length), ORT appends in place instead of
    /// copying the cache.
    GroupQuery,
    /// The same node in st's domain, `ai.st.GroupQueryAttention` (its CPU kernel works per KV head:
    /// `st_kernels::cpu::attention`; its CUDA kernel is `kernels/attention.cu`, f32, which ORT's own
    /// CUDA node is not), with GroupQueryAttention rotating q and k: the default on `--target cpu` with
    /// st's int4 op and on `--target cuda`. `--target tensorrt` gets [`Attention::GroupQuery`].
    StGroupQuery,
}

impl Attention {
    /// The decoder's attention node as the manifest names it (`precision.attention`).
    pub fn node(self) -> &'static str {
        match self {
            Attention::Standard => "standard",
            Attention::GroupQuery => "com.microsoft.GroupQueryAttention",
            Attention::StGroupQuery => "ai.st.GroupQueryAttention",
        }
    }
}

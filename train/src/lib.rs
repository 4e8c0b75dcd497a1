//! Fine-tuning SpatialThinker on one device, with libtorch through `tch`: the trainable
//! Qwen2.5-VL text decoder ([`model`], LoRA as a property of its linear layers), PEFT adapters in
//! and out ([`peft`]), AdamW with warm-up + cosine schedule and clipping ([`optim`]), and the SFT
//! trainer ([`sft`]) with its run directory (checkpoints, metrics, loss curve: [`run`]).
//!
//! The vision tower is frozen and not here: image embeddings come from the runtime's exported
//! vision graph (ONNX Runtime), computed once per image. Token ids, M-RoPE positions and the
//! prompt come from the `st` crate too, so training sees exactly what inference sees.

pub mod error;
pub mod generate;
pub mod grpo;
pub mod model;
pub mod optim;
pub mod peft;
pub mod plot;
pub mod run;
pub mod sft;

pub use error::{Error, Result};
pub use model::{Batch, LoadOptions, LoraOptions, TextModel};

/// Parse `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda_device(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda_device(n),
            None => {
                Err(Error::InvalidArgument { name: "--device", reason: format!("{s:?}: expected cpu, cuda or cuda:N") })
            }
        },
    }
}

fn cuda_device(n: usize) -> Result<tch::Device> {
    let count = tch::Cuda::device_count();
    if (n as i64) < count {
        Ok(tch::Device::Cuda(n))
    } else {
        Err(Error::Device {
            device: format!("cuda:{n}"),
            reason: format!(
                "libtorch sees {count} CUDA device(s) (cuda available: {}); is the torch wheel a CUDA build and a driver present?",
                tch::Cuda::is_available()
            ),
        })
    }
}

//! Where the graphs run: ONNX Runtime's CPU, CUDA or TensorRT execution provider. A GPU provider
//! that cannot be had (its provider library is not beside the ORT library, or registering it
//! fails, e.g. for missing CUDA libraries) is an error naming what is missing, unless the caller
//! allowed the CPU fallback, which is then logged.

use crate::error::{Error, Result};
use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An execution provider and its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
    },
    /// TensorRT builds an engine per graph at load; `cache_dir` keeps them between runs.
    TensorRt {
        device_id: i32,
        cache_dir: Option<PathBuf>,
    },
}

/// What the GPU providers need beside `libonnxruntime.so` (the `onnxruntime-gpu` wheel has them).
pub(crate) const GPU_HINT: &str = "install the onnxruntime-gpu==1.31.1 wheel (CUDA 13 build; needs the CUDA 13 runtime, cuBLAS and cuDNN 9 libraries, and TensorRT 10 for tensorrt) and point --ort-lib / ORT_DYLIB_PATH at its libonnxruntime.so.1.31.1";

impl std::str::FromStr for Device {
    type Err = Error;
    /// `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, id) = s.split_once(':').map_or((s, None), |(n, i)| (n, Some(i)));
        let device_id = match id {
            None => 0,
            Some(i) => i.parse().map_err(|_| Error::InvalidArgument {
                name: "device",
                reason: format!("{s:?}: the device number {i:?} is not an integer"),
            })?,
        };
        match name {
            "cpu" if id.is_none() => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { device_id }),
            "tensorrt" | "trt" => Ok(Device::TensorRt { device_id, cache_dir: None }),
            _ => Err(Error::InvalidArgument {
                name: "device",
                reason: format!("{s:?} is not one of cpu, cuda[:N], tensorrt[:N]"),
            }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
            Device::TensorRt { device_id, .. } => write!(f, "tensorrt:{device_id}"),
        }
    }
}

impl Device {
    /// The provider library ORT loads for this device, if any.
    pub fn provider_library(&self) -> Option<&'static str> {
        match self {
            Device::Cpu => None,
            Device::Cuda { .. } => Some("libonnxruntime_providers_cuda.so"),
            Device::TensorRt { .. } => Some("libonnxruntime_providers_tensorrt.so"),
        }
    }

    /// Check that the provider can be registered next to the ORT library at `ort_lib`.
    pub fn check_available(&self, ort_lib: &Path) -> Result<()> {
        let Some(lib) = self.provider_library() else { return Ok(()) };
        let dir = ort_lib.parent().unwrap_or(Path::new("."));
        if !dir.join(lib).is_file() {
            return Err(Error::Provider {
                device: self.to_string(),
                reason: format!("{lib} is not in {} (this ONNX Runtime is a CPU build)", dir.display()),
                hint: GPU_HINT,
            });
        }
        Ok(())
    }

    /// Register this device's provider on `builder` (CPU needs nothing).
    pub fn register(&self, builder: &mut SessionBuilder) -> Result<()> {
        let err = |e: ort::Error| Error::Provider { device: self.to_string(), reason: e.to_string(), hint: GPU_HINT };
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda { device_id } => {
                ort::ep::CUDA::default().with_device_id(*device_id).register(builder).map_err(err)
            }
            Device::TensorRt { device_id, cache_dir } => {
                let mut trt = ort::ep::TensorRT::default().with_device_id(*device_id);
                if let Some(dir) = cache_dir {
                    let dir = dir.display().to_string();
                    trt = trt.with_engine_cache(true).with_engine_cache_path(&dir).with_timing_cache(true);
                    trt = trt.with_timing_cache_path(dir);
                }
                trt.register(builder).map_err(err)?;
                // Nodes TensorRT does not take run on CUDA.
                ort::ep::CUDA::default().with_device_id(*device_id).register(builder).map_err(err)
            }
        }
    }
}

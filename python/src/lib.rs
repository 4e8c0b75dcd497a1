//! `st._native`: the Python extension under `import st` (python/st/__init__.py wraps it in typed
//! classes). The model runs with the GIL released; st's errors are `st.StError` with st's message.

// Python keyword arguments are function parameters here.
#![allow(clippy::too_many_arguments)]

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use st_core::decode::SamplingParams;
use st_core::engine::{Device, Engine, Frame, GenerateOptions, SessionOptions};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

create_exception!(_native, StError, PyException, "An error from st; the message names the file, argument or limit.");

fn st_err(e: st_core::Error) -> PyErr {
    StError::new_err(e.to_string())
}

/// A loaded model with its own KV cache. Calls on one engine take turns; `clone()` gives another
/// engine over the same loaded weights for another thread.
#[pyclass(module = "st._native", name = "Engine")]
struct PyEngine {
    engine: Mutex<Engine>,
}

/// An image encoded once (vision output and the prompt prefix's KV), asked about many times.
#[pyclass(module = "st._native", name = "Frame", frozen)]
struct PyFrame {
    frame: Frame,
}

impl PyEngine {
    fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl PyFrame {
    /// (width, height) of the original image: the space of every box.
    #[getter]
    fn size(&self) -> (u32, u32) {
        self.frame.image.original_size
    }
    /// (width, height) the model saw after smart resize.
    #[getter]
    fn resized_size(&self) -> (u32, u32) {
        self.frame.image.resized_size
    }
    #[getter]
    fn image_tokens(&self) -> usize {
        self.frame.embeds.nrows()
    }
    /// The frame's costs: preprocess_ms, vision_ms, prefix_prefill_ms, prefix_tokens.
    #[getter]
    fn timings(&self) -> (f64, f64, f64, usize) {
        let t = &self.frame.timings;
        (t.preprocess_ms, t.vision_ms, t.prefix_prefill_ms, t.prefix_tokens)
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (model, threads=None, device="cpu", cpu_fallback=false, min_pixels=None, max_pixels=None, ort_lib=None))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        threads: Option<usize>,
        device: &str,
        cpu_fallback: bool,
        min_pixels: Option<u64>,
        max_pixels: Option<u64>,
        ort_lib: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device: Device = device.parse().map_err(st_err)?;
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1 (None: ONNX Runtime's default)"));
        }
        let opts = SessionOptions { ort_lib, threads, device, cpu_fallback, ..Default::default() };
        let mut engine = py.detach(|| Engine::open(&model, &opts)).map_err(st_err)?;
        let pixels = &mut engine.preprocessor.options.pixels;
        pixels.min_pixels = min_pixels.unwrap_or(pixels.min_pixels);
        pixels.max_pixels = max_pixels.unwrap_or(pixels.max_pixels);
        if pixels.min_pixels > pixels.max_pixels {
            return Err(PyValueError::new_err(format!(
                "min_pixels {} is above max_pixels {}",
                pixels.min_pixels, pixels.max_pixels
            )));
        }
        Ok(Self { engine: Mutex::new(engine) })
    }

    /// Another engine over the same loaded weights, with its own KV cache.
    fn clone(&self) -> Self {
        Self { engine: Mutex::new(self.lock().clone()) }
    }

    /// The exported model directory and the device it runs on.
    #[getter]
    fn model(&self) -> (PathBuf, String) {
        let e = self.lock();
        (e.model().dir.clone(), e.model().device.to_string())
    }

    fn encode_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<PyFrame> {
        let frame = py.detach(|| self.lock().encode_image(&path)).map_err(st_err)?;
        Ok(PyFrame { frame })
    }

    fn encode_bytes(&self, py: Python<'_>, data: &[u8], name: &str) -> PyResult<PyFrame> {
        let frame = py.detach(|| self.lock().encode_bytes(data, name)).map_err(st_err)?;
        Ok(PyFrame { frame })
    }

    /// `data`: height × width × 3 bytes of RGB, rows packed.
    fn encode_rgb(&self, py: Python<'_>, data: Vec<u8>, width: u32, height: u32) -> PyResult<PyFrame> {
        let image = image::RgbImage::from_raw(width, height, data).ok_or_else(|| {
            PyValueError::new_err(format!("the pixel buffer does not hold {width}x{height} RGB pixels"))
        })?;
        let frame = py.detach(|| self.lock().encode_rgb(&image, "array")).map_err(st_err)?;
        Ok(PyFrame { frame })
    }

    /// Answer `question` about `frame`; returns the answer as `st-run --json`'s JSON text.
    /// `on_token(text, token_id)` is called with each token (with the GIL held); a true return
    /// stops generation.
    #[pyo3(signature = (frame, question, max_new_tokens=None, temperature=None, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0, grammar=true, on_token=None))]
    fn ask(
        &self,
        py: Python<'_>,
        frame: &PyFrame,
        question: &str,
        max_new_tokens: Option<usize>,
        temperature: Option<f32>,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
        grammar: bool,
        on_token: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let opts = GenerateOptions {
            max_new_tokens,
            sampling: SamplingParams { temperature, top_k, top_p, repetition_penalty, seed },
            grammar,
            ..Default::default()
        };
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            let mut engine = self.lock();
            let answer = engine.ask_streaming(&frame.frame, question, &opts, |t| {
                let Some(cb) = &on_token else { return ControlFlow::Continue(()) };
                Python::attach(|py| match cb.bind(py).call1((t.text, t.id)).and_then(|r| r.is_truthy()) {
                    Ok(false) => ControlFlow::Continue(()),
                    Ok(true) => ControlFlow::Break(()),
                    Err(e) => {
                        raised = Some(e);
                        ControlFlow::Break(())
                    }
                })
            })?;
            Ok::<_, st_core::Error>(answer.to_json(&frame.frame, engine.model()).to_string())
        });
        if let Some(e) = raised {
            return Err(e);
        }
        result.map_err(st_err)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyFrame>()?;
    m.add("StError", m.py().get_type::<StError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

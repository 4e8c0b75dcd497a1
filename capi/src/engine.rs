//! `StEngine`: a loaded model (exported directory, or a Hugging Face checkpoint exported once
//! into the cache) with its KV cache. Clones share the loaded sessions.

use crate::handle::{self, Handle};
use crate::status::{Error, StStatus, guard, utf8, utf8_opt, write_out};
use st_core::engine::{Device, Engine, SessionOptions};
use std::ffi::c_char;
use std::sync::{Mutex, MutexGuard};

/// An engine. Calls on one engine from several threads run one at a time; for parallel answers
/// give each thread its own clone (`st_engine_clone`).
pub struct StEngine {
    engine: Mutex<Engine>,
}

impl Handle for StEngine {
    const KIND: &'static str = "engine";
}

impl StEngine {
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        // A panic during a call was reported as ST_STATUS_INTERNAL; the engine's state is rebuilt
        // by the next call (the KV cache is refilled from the frame).
        self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How an engine is opened. Start from `st_engine_options_default()` and change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StEngineOptions {
    /// Intra-op threads; 0: ONNX Runtime's default (one per core).
    pub threads: u32,
    /// "cpu", "cuda", "cuda:N", "tensorrt" or "tensorrt:N"; NULL: "cpu".
    pub device: *const c_char,
    /// When the device's provider cannot be had, run on the CPU (logged) instead of failing.
    pub cpu_fallback: bool,
    /// Bounds of the resized image's pixel count; 0: the model's own (preprocessor_config.json).
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// Path of libonnxruntime.so; NULL: ORT_DYLIB_PATH, else the project's venv.
    pub ort_lib: *const c_char,
}

/// The defaults: ORT's threads, CPU, no fallback, the model's pixel bounds.
#[unsafe(no_mangle)]
pub extern "C" fn st_engine_options_default() -> StEngineOptions {
    StEngineOptions {
        threads: 0,
        device: std::ptr::null(),
        cpu_fallback: false,
        min_pixels: 0,
        max_pixels: 0,
        ort_lib: std::ptr::null(),
    }
}

/// Open `model` (an `st export` directory or a Hugging Face checkpoint directory) with `options`
/// (NULL: the defaults) and store the engine in `*out`. Free it with `st_engine_free`.
///
/// # Safety
/// `model` and the strings in `options` are NULL or NUL-terminated; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_engine_open(
    model: *const c_char,
    options: *const StEngineOptions,
    out: *mut *mut StEngine,
) -> StStatus {
    guard(|| {
        let model = unsafe { utf8(model, "model") }?;
        // SAFETY: NULL or a valid StEngineOptions by contract.
        let o = if options.is_null() { st_engine_options_default() } else { unsafe { *options } };
        let device = match unsafe { utf8_opt(o.device, "options.device") }? {
            Some(d) => d.parse::<Device>()?,
            None => Device::Cpu,
        };
        let ort_lib = unsafe { utf8_opt(o.ort_lib, "options.ort_lib") }?.map(Into::into);
        if out.is_null() {
            return Err(Error::Null { name: "out" });
        }
        if o.min_pixels > 0 && o.max_pixels > 0 && o.min_pixels > o.max_pixels {
            return Err(Error::Invalid {
                name: "options.min_pixels",
                reason: format!("{} is above options.max_pixels {}", o.min_pixels, o.max_pixels),
            });
        }
        let session = SessionOptions {
            ort_lib,
            threads: (o.threads > 0).then_some(o.threads as usize),
            device,
            cpu_fallback: o.cpu_fallback,
            ..Default::default()
        };
        let mut engine = Engine::open(model.as_ref(), &session)?;
        let pixels = &mut engine.preprocessor.options.pixels;
        if o.min_pixels > 0 {
            pixels.min_pixels = o.min_pixels;
        }
        if o.max_pixels > 0 {
            pixels.max_pixels = o.max_pixels;
        }
        unsafe { write_out(out, "out", handle::into_raw(StEngine { engine: Mutex::new(engine) })) }
    })
}

/// Another engine over the same loaded model (no weights copied), with its own KV cache, for use
/// on another thread. Free it with `st_engine_free`; the model stays loaded while any clone lives.
///
/// # Safety
/// `engine` is NULL or a pointer st returned; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_engine_clone(engine: *const StEngine, out: *mut *mut StEngine) -> StStatus {
    guard(|| {
        let e = unsafe { handle::get(engine, "engine") }?;
        let clone = e.lock().clone();
        unsafe { write_out(out, "out", handle::into_raw(StEngine { engine: Mutex::new(clone) })) }
    })
}

/// Free an engine. NULL is a no-op; a pointer that is not a live engine is left alone
/// (ST_STATUS_INVALID_HANDLE). Frames and answers made with it stay valid.
///
/// # Safety
/// No other call may be using `engine`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn st_engine_free(engine: *mut StEngine) -> StStatus {
    guard(|| unsafe { handle::free(engine, "engine") })
}

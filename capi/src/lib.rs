//! The C ABI of st: `libst.so` / `libst.a` and `include/st.h` (generated from this crate by
//! cbindgen; `capi/tests/header.rs` checks it is current). docs/EMBEDDING.md explains handles,
//! lifetimes, threads and error codes.
//!
//! Every entry point returns a status (or, for accessors, a value with a NULL / 0 fallback), keeps
//! a thread-local message for `st_last_error()`, refuses NULL and pointers that are not live
//! handles of the right kind before touching them, and catches any panic at the boundary.

pub mod answer;
pub mod engine;
pub mod frame;
pub mod handle;
pub mod status;

use std::ffi::{CStr, c_char};

/// The library's version, e.g. "0.1.0" (static storage).
#[unsafe(no_mangle)]
pub extern "C" fn st_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// Panics inside st, to show that a panic comes back as `ST_STATUS_INTERNAL` with a message and
/// never crosses into C (the C tests call it; it has no other use).
#[unsafe(no_mangle)]
pub extern "C" fn st_internal_panic_for_tests() -> status::StStatus {
    status::guard(|| panic!("st_internal_panic_for_tests was called"))
}

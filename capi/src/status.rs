//! Status codes, the thread-local last error, and the guard every entry point runs its body in:
//! errors become a status and a message, a panic becomes `ST_STATUS_INTERNAL` and never unwinds
//! into C.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call returns. `ST_STATUS_OK` is 0; every other code comes with a message from
/// `st_last_error()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StStatus {
    Ok = 0,
    /// A NULL pointer where one is required, a string that is not UTF-8, or an option out of range.
    InvalidArgument = 1,
    /// A pointer that is not a live handle of the expected kind (freed, or never returned by st).
    InvalidHandle = 2,
    /// A file could not be read or written.
    Io = 3,
    /// An image could not be decoded, or breaks a preprocessing limit.
    Image = 4,
    /// The model directory, its manifest, tokenizer or template is missing or malformed.
    Model = 5,
    /// ONNX Runtime, an execution provider, or constrained decoding failed while running.
    Runtime = 6,
    /// A bug in st: a panic caught at the C boundary. The handles involved should be freed.
    Internal = 7,
}

/// The C ABI's own errors, and the runtime's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name} is NULL")]
    Null { name: &'static str },
    #[error("{name}: not a live {kind} handle (freed already, or never returned by st)")]
    Handle { name: &'static str, kind: &'static str },
    #[error("{name} is not valid UTF-8 (byte {at})")]
    Utf8 { name: &'static str, at: usize },
    #[error("invalid value for {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(transparent)]
    St(#[from] st_core::Error),
    #[error("internal error in st (a panic, caught at the C boundary): {0}")]
    Panic(String),
}

impl Error {
    pub fn status(&self) -> StStatus {
        use st_core::Error as E;
        match self {
            Error::Null { .. } | Error::Utf8 { .. } | Error::Invalid { .. } => StStatus::InvalidArgument,
            Error::Handle { .. } => StStatus::InvalidHandle,
            Error::Panic(_) => StStatus::Internal,
            Error::St(e) => match e {
                E::Io { .. } => StStatus::Io,
                E::ImageDecode { .. } | E::ImageLimit { .. } | E::AspectRatio { .. } => StStatus::Image,
                E::InvalidArgument { .. } | E::Prompt { .. } => StStatus::InvalidArgument,
                E::Checkpoint(_) | E::Export(_) | E::Tokenizer { .. } | E::Template { .. } => StStatus::Model,
                E::MissingSpecialToken { .. } => StStatus::Model,
                E::Grammar { .. } | E::OrtNotFound { .. } | E::Provider { .. } | E::Ort { .. } => StStatus::Runtime,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Record `message` as this thread's last error (NUL bytes, which C cannot hold, become spaces).
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::default());
}

/// Run an entry point's body: `ST_STATUS_OK` and an empty last error on success; the error's
/// status and message otherwise; `ST_STATUS_INTERNAL` if it panicked.
pub fn guard(body: impl FnOnce() -> Result<()>) -> StStatus {
    let err = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            return StStatus::Ok;
        }
        Ok(Err(e)) => e,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Error::Panic(what)
        }
    };
    set_last_error(&err.to_string());
    err.status()
}

/// [`guard`] for calls that return a value instead of a status: `fallback` on error or panic.
pub fn guard_value<T>(fallback: T, body: impl FnOnce() -> Result<T>) -> T {
    let mut value = None;
    let status = guard(|| {
        value = Some(body()?);
        Ok(())
    });
    match (status, value) {
        (StStatus::Ok, Some(v)) => v,
        _ => fallback,
    }
}

/// A required C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub unsafe fn utf8<'a>(p: *const c_char, name: &'static str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::Null { name });
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| Error::Utf8 { name, at: e.valid_up_to() })
}

/// An optional C string argument (NULL: `None`).
///
/// # Safety
/// As [`utf8`].
pub unsafe fn utf8_opt<'a>(p: *const c_char, name: &'static str) -> Result<Option<&'a str>> {
    if p.is_null() { Ok(None) } else { unsafe { utf8(p, name) }.map(Some) }
}

/// Write `value` through a required out-pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub unsafe fn write_out<T>(out: *mut T, name: &'static str, value: T) -> Result<()> {
    if out.is_null() {
        return Err(Error::Null { name });
    }
    // SAFETY: non-null and writable by the caller's contract.
    unsafe { out.write(value) };
    Ok(())
}

/// This thread's last error message: empty after a call that succeeded. The pointer stays valid
/// until the next st call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn st_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A short name for a status code, e.g. "ST_STATUS_IMAGE"; "ST_STATUS_UNKNOWN" for a number that is
/// none (static storage; never NULL).
#[unsafe(no_mangle)]
pub extern "C" fn st_status_name(status: i32) -> *const c_char {
    const NAMES: [&CStr; 8] = [
        c"ST_STATUS_OK",
        c"ST_STATUS_INVALID_ARGUMENT",
        c"ST_STATUS_INVALID_HANDLE",
        c"ST_STATUS_IO",
        c"ST_STATUS_IMAGE",
        c"ST_STATUS_MODEL",
        c"ST_STATUS_RUNTIME",
        c"ST_STATUS_INTERNAL",
    ];
    let name = usize::try_from(status).ok().and_then(|i| NAMES.get(i)).copied();
    name.unwrap_or(c"ST_STATUS_UNKNOWN").as_ptr()
}

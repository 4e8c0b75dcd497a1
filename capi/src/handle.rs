//! Handles: boxed Rust values whose addresses C holds. Every live handle is in one registry with
//! its kind, so a NULL, freed, foreign or wrongly typed pointer is refused before it is
//! dereferenced, and a double free is a no-op.

use crate::status::{Error, Result};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

/// A type C holds by pointer.
pub trait Handle: Sized {
    /// The kind named in errors ("engine", "frame", "answer").
    const KIND: &'static str;
}

static LIVE: LazyLock<Mutex<HashMap<usize, &'static str>>> = LazyLock::new(Default::default);

fn live() -> MutexGuard<'static, HashMap<usize, &'static str>> {
    // The map holds plain data: a panic elsewhere while it was locked leaves it consistent.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Box `value` and register it; C owns the returned pointer until its free function.
pub fn into_raw<T: Handle>(value: T) -> *mut T {
    let p = Box::into_raw(Box::new(value));
    live().insert(p as usize, T::KIND);
    p
}

/// The value behind a live handle of kind `T`.
///
/// # Safety
/// A registered pointer must not be freed by another thread while the returned reference is in
/// use (docs/EMBEDDING.md: a handle is freed by its owner when no call uses it).
pub unsafe fn get<'a, T: Handle>(p: *const T, name: &'static str) -> Result<&'a T> {
    if p.is_null() {
        return Err(Error::Null { name });
    }
    if live().get(&(p as usize)) != Some(&T::KIND) {
        return Err(Error::Handle { name, kind: T::KIND });
    }
    // SAFETY: registered by `into_raw` for this type and not yet freed.
    Ok(unsafe { &*p })
}

/// Unregister and drop a handle. NULL is a no-op; a pointer that is not a live handle of kind `T`
/// is left alone and reported.
///
/// # Safety
/// As [`get`]: no other call may be using the handle.
pub unsafe fn free<T: Handle>(p: *mut T, name: &'static str) -> Result<()> {
    if p.is_null() {
        return Ok(());
    }
    let removed = {
        let mut map = live();
        match map.get(&(p as usize)) {
            Some(&kind) if kind == T::KIND => map.remove(&(p as usize)).is_some(),
            _ => false,
        }
    };
    if !removed {
        return Err(Error::Handle { name, kind: T::KIND });
    }
    // SAFETY: it was a live `Box<T>` from `into_raw`, now unregistered, so dropped exactly once.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}

/// How many handles are live (tests check that every one was freed).
#[unsafe(no_mangle)]
pub extern "C" fn st_live_handles() -> usize {
    live().len()
}

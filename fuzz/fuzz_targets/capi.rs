//! The C ABI's string and buffer inputs — the question, the device and model strings, a frame's
//! name and encoded bytes, part and index numbers — as a C caller may pass them (any bytes up to a
//! NUL, invalid UTF-8 included): a status and `st_last_error`, never a panic or a memory error, and
//! every answer with the grammar on valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use capi::answer::*;
use capi::engine::*;
use capi::frame::*;
use capi::status::*;
use std::ffi::CString;
use std::ptr;
use std::sync::LazyLock;

struct Fixture {
    engine: *mut StEngine,
    frame: *mut StFrame,
}
// SAFETY: the C ABI's handles may be used from any thread (the engine is behind a mutex).
unsafe impl Send for Fixture {}
unsafe impl Sync for Fixture {}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let model = CString::new(st_fuzz::fixture("models/tiny").to_str().expect("UTF-8 path")).expect("no NUL");
    let image = std::fs::read(st_fuzz::fixture("images/chelsea.png")).expect("the fixture image");
    let (mut engine, mut frame) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: valid strings and out pointers.
    unsafe {
        assert_eq!(st_engine_open(model.as_ptr(), ptr::null(), &mut engine), StStatus::Ok, "the tiny model opens");
        let s = st_frame_from_bytes(engine, image.as_ptr(), image.len(), ptr::null(), &mut frame);
        assert_eq!(s, StStatus::Ok, "the fixture image encodes");
    }
    Fixture { engine, frame }
});

/// `bytes` up to its first NUL, NUL-terminated, as C strings are.
fn c_string(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).expect("no NUL before the end")
}

fuzz_target!(|data: &[u8]| {
    // [numbers, question, device, model, frame name, image bytes]
    let p = st_fuzz::parts(data, 6);
    let f = &*FIXTURE;
    let n = |i: usize| p[0].get(i).copied().unwrap_or(0);
    let (question, device, model, name) = (c_string(p[1]), c_string(p[2]), c_string(p[3]), c_string(p[4]));
    // SAFETY: every pointer is valid or NULL, as the C ABI's contract asks of a caller.
    unsafe {
        // Opening: a model path that cannot exist, so a device that parses still fails fast.
        let mut missing = b"/nonexistent/st-fuzz/".to_vec();
        missing.extend_from_slice(model.as_bytes());
        let missing = CString::new(missing).expect("no NUL");
        let mut o = st_engine_options_default();
        o.device = device.as_ptr();
        let mut engine = ptr::null_mut();
        assert_ne!(st_engine_open(missing.as_ptr(), &o, &mut engine), StStatus::Ok);
        assert!(engine.is_null());
        assert!(!st_last_error().is_null());

        let mut frame = ptr::null_mut();
        if st_frame_from_bytes(f.engine, p[5].as_ptr(), p[5].len(), name.as_ptr(), &mut frame) == StStatus::Ok {
            assert_eq!(st_frame_free(frame), StStatus::Ok);
        }

        let mut opts = st_generate_options_default();
        opts.max_new_tokens = 1 + u32::from(n(0) % 48);
        opts.temperature = f32::from(n(1) % 4) * 0.5;
        opts.seed = u64::from(n(2));
        let mut answer = ptr::null_mut();
        if st_ask(f.engine, f.frame, question.as_ptr(), &opts, &mut answer) == StStatus::Ok {
            let mut info = std::mem::zeroed::<StAnswerInfo>();
            assert_eq!(st_answer_info(answer, &mut info), StStatus::Ok);
            assert!(info.valid, "an answer under the grammar is valid");
            let _ = st_answer_text(answer, u32::from(n(3) % 8));
            let mut object = std::mem::zeroed::<StObject>();
            let _ = st_answer_object(answer, usize::from(n(4) % 4), &mut object);
            assert_eq!(st_answer_free(answer), StStatus::Ok);
        }
        let _ = st_status_name(i32::from(n(5)) - 128);
    }
});

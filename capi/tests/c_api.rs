//! The C entry points called from Rust: a camera buffer (BGRA with padded rows) gives the same frame
//! and answer as the image file; engine clones answer from several threads at once as one engine
//! does alone; a streaming callback can stop generation.

use st::answer::{StAnswer, StAnswerInfo, StGenerateOptions, StStop, st_answer_free, st_answer_info, st_answer_text};
use st::answer::{st_ask, st_ask_stream, st_generate_options_default};
use st::engine::{StEngine, st_engine_clone, st_engine_free, st_engine_open, st_engine_options_default};
use st::frame::{StFrame, StPixelFormat, st_frame_free, st_frame_from_file, st_frame_from_pixels};
use st::status::StStatus;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn open() -> *mut StEngine {
    // One export cache for the tests of this process, set before any of them opens an engine.
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        unsafe { std::env::set_var("ST_CACHE_DIR", &dir) };
        dir
    });
    let mut opts = st_engine_options_default();
    opts.threads = 1;
    let model = c(root().join("tests/fixtures/models/tiny").to_str().unwrap());
    let mut engine = null_mut();
    let status = unsafe { st_engine_open(model.as_ptr(), &opts, &mut engine) };
    let message = unsafe { CStr::from_ptr(st::status::st_last_error()) }.to_string_lossy().into_owned();
    assert_eq!(status, StStatus::Ok, "{message}");
    engine
}

fn raw(answer: *const StAnswer) -> String {
    let p = unsafe { st_answer_text(answer, 0) };
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn ask(engine: *const StEngine, frame: *const StFrame, seed: u64) -> String {
    let q = c("Is the cat to the left of the table? (A) yes (B) no");
    let opts = StGenerateOptions { max_new_tokens: 48, temperature: 1.0, seed, ..st_generate_options_default() };
    let mut answer = null_mut();
    assert_eq!(unsafe { st_ask(engine, frame, q.as_ptr(), &opts, &mut answer) }, StStatus::Ok);
    let text = raw(answer);
    assert_eq!(unsafe { st_answer_free(answer) }, StStatus::Ok);
    text
}

#[test]
fn a_camera_buffer_is_the_same_frame_as_the_file() {
    let engine = open();
    let path = root().join("tests/fixtures/images/chelsea.png");
    let mut from_file = null_mut();
    let p = c(path.to_str().unwrap());
    assert_eq!(unsafe { st_frame_from_file(engine, p.as_ptr(), &mut from_file) }, StStatus::Ok);
    // The same pixels as a BGRA buffer whose rows are padded to a multiple of 64 bytes.
    let rgb = st_core::preprocess::decode_file(&path, &Default::default(), true).unwrap();
    let (w, h) = rgb.dimensions();
    let stride = (w as usize * 4).div_ceil(64) * 64;
    let mut bgra = vec![0xEEu8; stride * h as usize];
    for (x, y, px) in rgb.enumerate_pixels() {
        let at = y as usize * stride + x as usize * 4;
        bgra[at..at + 4].copy_from_slice(&[px[2], px[1], px[0], 0x7F]);
    }
    let mut from_pixels = null_mut();
    let format = StPixelFormat::Bgra8 as u32;
    let status = unsafe { st_frame_from_pixels(engine, bgra.as_ptr(), w, h, stride, format, &mut from_pixels) };
    assert_eq!(status, StStatus::Ok);
    let (a, b) = unsafe { (&(*from_file).frame, &(*from_pixels).frame) };
    assert_eq!(a.image.pixel_values, b.image.pixel_values);
    assert_eq!(ask(engine, from_file, 7), ask(engine, from_pixels, 7));
    unsafe {
        st_frame_free(from_pixels);
        st_frame_free(from_file);
        st_engine_free(engine);
    }
}

#[test]
fn clones_answer_from_threads_as_one_engine_does() {
    let engine = open();
    let path = c(root().join("tests/fixtures/images/chelsea.png").to_str().unwrap());
    let mut frame = null_mut();
    assert_eq!(unsafe { st_frame_from_file(engine, path.as_ptr(), &mut frame) }, StStatus::Ok);
    let want: Vec<String> = (0..4).map(|seed| ask(engine, frame, seed)).collect();
    // Raw pointers are not Send; the handles are (docs/EMBEDDING.md#threads), so pass addresses.
    let frame_addr = frame as usize;
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let mut clone = null_mut();
            assert_eq!(unsafe { st_engine_clone(engine, &mut clone) }, StStatus::Ok);
            let clone_addr = clone as usize;
            std::thread::spawn(move || {
                let clone = clone_addr as *mut StEngine;
                let got: Vec<(u64, String)> =
                    [t, t + 2].into_iter().map(|seed| (seed, ask(clone, frame_addr as *const StFrame, seed))).collect();
                unsafe { st_engine_free(clone) };
                got
            })
        })
        .collect();
    for h in handles {
        for (seed, text) in h.join().unwrap() {
            assert_eq!(text, want[seed as usize], "seed {seed}");
        }
    }
    unsafe {
        st_frame_free(frame);
        st_engine_free(engine);
    }
}

unsafe extern "C" fn stop_after_five(user_data: *mut c_void, text: *const c_char, _id: u32) -> i32 {
    let seen = unsafe { &mut *(user_data as *mut Vec<String>) };
    seen.push(unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned());
    i32::from(seen.len() >= 5)
}

#[test]
fn the_streaming_callback_sees_every_token_and_can_stop() {
    let engine = open();
    let path = c(root().join("tests/fixtures/images/chelsea.png").to_str().unwrap());
    let mut frame = null_mut();
    assert_eq!(unsafe { st_frame_from_file(engine, path.as_ptr(), &mut frame) }, StStatus::Ok);
    let q = c("Where is the cat? (A) left (B) right");
    let mut seen: Vec<String> = Vec::new();
    let mut answer = null_mut();
    let opts = StGenerateOptions { grammar: false, ..st_generate_options_default() };
    let user = &mut seen as *mut Vec<String> as *mut c_void;
    let status = unsafe { st_ask_stream(engine, frame, q.as_ptr(), &opts, Some(stop_after_five), user, &mut answer) };
    assert_eq!(status, StStatus::Ok);
    let mut info = std::mem::MaybeUninit::<StAnswerInfo>::uninit();
    assert_eq!(unsafe { st_answer_info(answer, info.as_mut_ptr()) }, StStatus::Ok);
    let info = unsafe { info.assume_init() };
    assert_eq!(info.stop, StStop::Callback);
    assert_eq!(info.new_tokens, 5);
    assert_eq!(seen.concat(), raw(answer));
    unsafe {
        st_answer_free(answer);
        st_frame_free(frame);
        st_engine_free(engine);
    }
}

//! Faults from outside: `kill -9` in the middle of `st export`, a full disk while writing an export,
//! a drawing or reward scores, and an ONNX Runtime library that is missing, not a library, not
//! ONNX Runtime or of another version. Each must end in a clear error naming the file, with no
//! partial output left and the inputs untouched — never a half-written directory taken for a model.

mod common;

use st::engine::{Engine, SessionOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ST: &str = env!("CARGO_BIN_EXE_st");
const ST_RUN: &str = env!("CARGO_BIN_EXE_st-run");

/// Every file under `dir` with its bytes, for "the inputs are untouched".
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// Names in `dir` other than `keep`: what a failed or killed command left behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

fn export(src: &Path, out: &Path) -> Output {
    Command::new(ST).arg("export").arg(src).arg(out).output().unwrap()
}

#[test]
fn kill_9_during_export_leaves_no_model_or_a_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model("tiny");
    let before = snapshot(&src);
    let t = Instant::now();
    assert!(export(&src, &tmp.path().join("whole")).status.success());
    let whole = t.elapsed();
    // Kills spread over 1.2× the export's own duration: while starting, reading the checkpoint,
    // writing each graph, writing the manifest, renaming, after.
    let points = 40u32;
    let (mut survived, mut interrupted) = (0, 0);
    for k in 0..points {
        let out = tmp.path().join(format!("out{k}"));
        let mut child = Command::new(ST)
            .arg("export")
            .arg(&src)
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole * k * 6 / (points * 5));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if out.exists() {
            // What is there under the real name is a whole export: it loads, its graphs match its manifest.
            Engine::load(&out, &SessionOptions::default())
                .unwrap_or_else(|e| panic!("kill {k}: {} exists but does not load: {e}", out.display()));
            survived += 1;
        }
        // Anything else it left is a hidden `.outK.partial-PID-N`, never taken for a model; the next
        // export into the same output removes it and succeeds.
        let name = format!("out{k}");
        let left: Vec<_> =
            leftovers(tmp.path(), &["whole"]).into_iter().filter(|n| n.contains(&name) && *n != name).collect();
        for l in &left {
            assert!(l.starts_with(&format!(".{name}.partial-")), "kill {k} left {l}");
        }
        interrupted += usize::from(!left.is_empty());
        if !out.exists() {
            let again = export(&src, &out);
            assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
            Engine::load(&out, &SessionOptions::default()).unwrap();
        }
        let stale: Vec<_> =
            leftovers(tmp.path(), &[]).into_iter().filter(|n| n.starts_with(&format!(".{name}."))).collect();
        assert!(stale.is_empty(), "kill {k}: the re-export left {stale:?}");
    }
    assert_eq!(snapshot(&src), before, "the checkpoint is untouched");
    assert!(interrupted > 0, "no kill landed while the export was writing");
    println!(
        "{points} kills over an export of {whole:?}: {interrupted} mid-write, {survived} after it had finished; no half-written model under the real name"
    );
}

/// `exe args…` with the size of any file it writes limited to `kib` KiB (RLIMIT_FSIZE, SIGXFSZ
/// ignored): a write past it fails with EFBIG, as a full disk fails one with ENOSPC.
fn with_file_limit(kib: u64, exe: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$@\""))
        .arg("limited")
        .arg(exe)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_is_a_clear_error_with_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model("tiny");
    let before = snapshot(&src);

    // st export: the graphs' data files outgrow the limit.
    let out = tmp.path().join("export");
    let r = with_file_limit(64, ST, &["export".as_ref(), src.as_os_str(), out.as_os_str()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("File too large") && err.contains(".export.partial-"), "{err}");
    assert!(leftovers(tmp.path(), &[]).is_empty(), "left {:?}", leftovers(tmp.path(), &[]));
    assert_eq!(snapshot(&src), before, "the checkpoint is untouched");

    // st-run --draw: the PNG outgrows the limit; the answer itself was printed.
    let model = tmp.path().join("model");
    assert!(export(&src, &model).status.success());
    let drawn = tmp.path().join("drawn.png");
    let image = common::image("chelsea.png");
    let args: [&std::ffi::OsStr; 8] = [
        image.as_os_str(),
        "Where is the cat? (A) left (B) right".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--max-new-tokens".as_ref(),
        "64".as_ref(),
        "--draw".as_ref(),
        drawn.as_os_str(),
    ];
    let r = with_file_limit(8, ST_RUN, &args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("--draw") && err.contains("File too large"), "{err}");
    assert_eq!(leftovers(tmp.path(), &["model"]), Vec::<String>::new());

    // st reward --output: the scores outgrow the limit.
    let input = tmp.path().join("in.jsonl");
    let rows = std::fs::read_to_string(common::fixtures().join("synth/data.jsonl")).unwrap();
    let lines: String = rows
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let row = serde_json::json!({"completion": v["ground_truth"], "ground_truth": v["ground_truth"], "image_size": [256, 256]});
            format!("{row}\n")
        })
        .collect::<String>()
        .repeat(40);
    std::fs::write(&input, &lines).unwrap();
    let scores = tmp.path().join("scores.jsonl");
    let r = with_file_limit(
        4,
        ST,
        &["reward".as_ref(), "--input".as_ref(), input.as_os_str(), "--output".as_ref(), scores.as_os_str()],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("--output") && err.contains("File too large"), "{err}");
    assert_eq!(leftovers(tmp.path(), &["model", "in.jsonl"]), Vec::<String>::new());
    assert_eq!(std::fs::read_to_string(&input).unwrap(), lines, "the input is untouched");
    // Without the limit the same command writes them.
    let ok = Command::new(ST).args(["reward", "--input"]).arg(&input).arg("--output").arg(&scores).output().unwrap();
    assert!(ok.status.success() && scores.is_file());
}

/// A shared library from C source, built with the system's compiler.
fn shared_library(dir: &Path, name: &str, source: &str) -> PathBuf {
    let (c, so) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&c, source).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(cc).args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).status().unwrap();
    assert!(built.success(), "building {name}");
    so
}

#[test]
fn a_wrong_onnx_runtime_library_is_a_clear_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assert!(export(&common::model("tiny"), &model).status.success());
    let text = tmp.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&text, "not a library\n").unwrap();
    let not_ort = shared_library(tmp.path(), "libnotort.so", "int some_function(void) { return 1; }\n");
    // What an older ONNX Runtime answers: its version, and no API of version 31.
    let old = shared_library(
        tmp.path(),
        "libonnxruntime.so.1.16.3",
        r#"
typedef struct { const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); } OrtApiBase;
static const void* get_api(unsigned v) { (void)v; return 0; }
static const char* version(void) { return "1.16.3"; }
static const OrtApiBase base = { get_api, version };
const OrtApiBase* OrtGetApiBase(void) { return &base; }
"#,
    );
    let missing = tmp.path().join("nowhere/libonnxruntime.so");
    let cases: [(&Path, &[&str]); 4] = [
        (&missing, &["no such file"]),
        (&text, &["not a shared library"]),
        (&not_ort, &["does not export `OrtGetApiBase`"]),
        (&old, &["1.16.3", "1.31"]),
    ];
    let image = common::image("tiny_10x7.png");
    for (lib, needles) in cases {
        for (flag, env) in [(true, None), (false, Some(lib))] {
            let mut cmd = Command::new(ST_RUN);
            cmd.arg(&image).arg("What is it?").arg("--model").arg(&model).env_remove("ORT_DYLIB_PATH");
            if flag {
                cmd.arg("--ort-lib").arg(lib);
            }
            if let Some(p) = env {
                cmd.env("ORT_DYLIB_PATH", p);
            }
            let t = Instant::now();
            let r = cmd.env("RUST_BACKTRACE", "0").output().unwrap();
            let took = t.elapsed();
            let err = String::from_utf8_lossy(&r.stderr);
            assert_eq!(r.status.code(), Some(1), "{}: {err}", lib.display());
            assert!(err.contains(&lib.display().to_string()), "the error names the file: {err}");
            for n in needles {
                assert!(err.contains(n), "missing {n:?} in: {err}");
            }
            assert!(!err.contains("panicked"), "{err}");
            // A hang guard, not a benchmark (docs/RELIABILITY.md has the times).
            assert!(took < Duration::from_secs(30), "{took:?}");
        }
    }
}

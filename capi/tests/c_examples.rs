//! The C examples built with the system compiler against libst.so and run on the tiny model:
//! examples/c/ask.c's answer equals the Rust API's for the same inputs, and examples/c/errors.c
//! drives every error path under valgrind with no error and no leak reported.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where cargo put the libst.so built with this test: target/<profile>/deps beside the test binary
/// (`cargo test` builds the cdylib there without copying it up to target/<profile>).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    assert!(deps.join("libst.so").exists(), "no libst.so in {}", deps.display());
    deps
}

/// Compile `examples/c/<name>.c` into `out`.
fn compile(name: &str, out: &Path) -> PathBuf {
    compile_file(&root().join(format!("examples/c/{name}.c")), out)
}

/// Compile one C (or, for `.cpp`, C++17) file against include/ and libst.so into `out`.
fn compile_file(src: &Path, out: &Path) -> PathBuf {
    let lib = lib_dir();
    let name = src.file_stem().unwrap().to_str().unwrap();
    let exe = out.join(name);
    let cpp = src.extension().is_some_and(|e| e == "cpp");
    let (compiler, std) = if cpp { ("c++", "-std=c++17") } else { ("cc", "-std=c11") };
    let status = Command::new(compiler)
        .args([std, "-Wall", "-Wextra", "-Werror", "-g"])
        .arg(src)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-L")
        .arg(&lib)
        .arg("-lst")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("the system compiler `{compiler}`: {e}"));
    assert!(status.success(), "{compiler} {} failed", src.display());
    exe
}

fn tiny() -> PathBuf {
    root().join("tests/fixtures/models/tiny")
}

const QUESTION: &str = "Is the cat to the left of the table? (A) yes (B) no";

/// Run an example as `EXE MODEL IMAGE QUESTION` on the tiny model and chelsea.png; it must succeed and
/// print each of `wants`. Returns its stdout.
fn ask_tiny(exe: &Path, tmp: &Path, wants: &[&str]) -> String {
    let out = Command::new(exe)
        .env("ST_CACHE_DIR", tmp.join("cache"))
        .arg(tiny())
        .arg(root().join("tests/fixtures/images/chelsea.png"))
        .arg(QUESTION)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in wants {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }
    stdout
}

#[test]
fn the_c_example_answers_as_the_rust_api_does() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile("ask", tmp.path());
    let image = root().join("tests/fixtures/images/chelsea.png");
    let stdout = ask_tiny(&exe, tmp.path(), &["valid: yes", "same text: yes", "live handles: 0", "frame: 451x300"]);
    let json = stdout.lines().find_map(|l| l.strip_prefix("json: ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();

    // The same question through the Rust API, on the export the C example made in its cache: the same
    // tokens and text.
    let export = std::fs::read_dir(tmp.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest.json").is_file())
        .unwrap();
    let opts = st_core::engine::SessionOptions { threads: Some(1), ..Default::default() };
    let mut engine = st_core::engine::Engine::load(&export, &opts).unwrap();
    let frame = engine.encode_image(&image).unwrap();
    let options = st_core::engine::GenerateOptions { max_new_tokens: Some(400), ..Default::default() };
    let want = engine.ask(&frame, QUESTION, &options).unwrap();
    assert_eq!(v["raw"], want.raw.as_str());
    assert_eq!(v["token_ids"], serde_json::json!(want.token_ids));
    assert_eq!(v["valid"], true);
    let objects = want.response.scene.as_ref().map_or(0, |s| s.objects.len());
    assert!(stdout.contains(&format!("objects: {objects}\n")), "{stdout}");
}

#[test]
fn the_c_error_paths_hold_under_valgrind() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile("errors", tmp.path());
    let corrupt = tmp.path().join("corrupt.png");
    let mut png = std::fs::read(root().join("tests/fixtures/images/chelsea.png")).unwrap();
    png.truncate(200);
    std::fs::write(&corrupt, png).unwrap();
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(valgrind.is_ok_and(|o| o.status.success()), "valgrind is needed (make test installs it)");
    let out = Command::new("valgrind")
        .args(["--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite"])
        .args(["--show-leak-kinds=definite", "--track-origins=no", "-q"])
        .arg(format!("--suppressions={}", root().join("capi/tests/valgrind.supp").display()))
        .arg(&exe)
        .arg(tiny())
        .arg(&corrupt)
        .env("ST_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status.code());
    assert!(stdout.contains("0 failures") && !stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn the_readme_c_snippet_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = &readme[readme.find("## From C").unwrap()..];
    let start = after.find("```c\n").unwrap() + 5;
    let body = &after[start..start + after[start..].find("```").unwrap()];
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("readme.c");
    std::fs::write(&src, format!("#include <stdio.h>\n#include \"st.h\"\nint main(void) {{\n{body}return 0;\n}}\n"))
        .unwrap();
    let exe = compile_file(&src, tmp.path());
    let out = Command::new(&exe).current_dir(root()).env("ST_CACHE_DIR", tmp.path().join("cache")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().last().is_some_and(|l| l.starts_with("(A)") || l.starts_with("(B)")), "{stdout}");
}

#[test]
fn the_cpp_wrappers_free_every_handle_and_throw_st_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile_file(&root().join("examples/c/ask.cpp"), tmp.path());
    ask_tiny(&exe, tmp.path(), &["valid: yes", "error as expected: ST_STATUS_IO: /nonexistent.png", "live handles: 0"]);
}

//! `st finetune --sft` end to end on the tiny fixture and the committed synthetic rows (built
//! with the `train` feature; `make train-test`): the held-out loss falls; `--resume` after an
//! interruption gives the same adapter bit for bit as an uninterrupted run; bad rows are
//! reported, skipped and counted; a run from other settings, a checkpoint without weights,
//! NaN losses and interrupted saves are clear errors that keep the last good checkpoint.
#![cfg(feature = "train")]

mod common;
use common::{fixtures, model};
use std::path::Path;
use std::process::{Command, Output};

use std::ffi::OsString;

fn st(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_st")).arg("finetune").args(args).output().unwrap()
}

fn sft_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--sft".into(), "--model".into(), model("tiny").into()];
    v.extend(["--data".into(), data.into(), "--out".into(), out.into()]);
    v.extend(extra.iter().map(OsString::from));
    v
}

fn synth() -> std::path::PathBuf {
    fixtures().join("synth/data.jsonl")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const FAST: [&str; 12] =
    ["--steps", "6", "--batch", "4", "--micro-batch", "2", "--lr", "5e-3", "--warmup", "2", "--save-every", "3"];

#[test]
fn resume_after_an_interruption_gives_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let data = synth();
    ok(&st(&sft_args(&data, &a, &FAST)));
    ok(&st(&sft_args(&data, &b, &FAST)));
    // The uninterrupted runs agree with each other (determinism), and b is then "interrupted"
    // after its step-3 checkpoint: what a crash during step 4-6 leaves behind.
    let adapter = |d: &Path| bytes(&d.join("adapter/adapter_model.safetensors"));
    assert_eq!(adapter(&a), adapter(&b));
    std::fs::remove_dir_all(b.join("checkpoints/step-6")).unwrap();
    std::fs::remove_dir_all(b.join("adapter")).unwrap();
    // A half-written save of step 6 and an unreadable step-9 folder are ignored.
    std::fs::create_dir_all(b.join("checkpoints/.step-6.tmp-1/adapter")).unwrap();
    std::fs::create_dir_all(b.join("checkpoints/step-9")).unwrap();
    let mut resume: Vec<&str> = FAST.to_vec();
    resume.push("--resume");
    ok(&st(&sft_args(&data, &b, &resume)));
    assert_eq!(adapter(&a), adapter(&b), "resumed adapter differs");
    let metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().count(), 6);
    // The run directory holds everything the docs promise.
    for f in [
        "config.json",
        "loss.png",
        "summary.json",
        "adapter/adapter_config.json",
        "checkpoints/step-0/trainer_state.json",
        "checkpoints/step-3/optimizer.safetensors",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let line: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for key in ["step", "loss", "grad_norm", "lr", "tokens", "seconds"] {
        assert!(line[key].is_number(), "{key} missing from {line}");
    }
}

#[test]
fn held_out_loss_falls() {
    // The CI-sized learning check (docs/TRAINING.md has the full run): 40 steps on the 11
    // committed rows, loss measured on rows of another seed's images.
    let tmp = tempfile::tempdir().unwrap();
    let eval_dir = tmp.path().join("eval");
    let synth_out = Command::new(env!("CARGO_BIN_EXE_st"))
        .args([
            "data".as_ref(),
            "synth".as_ref(),
            "--out".as_ref(),
            eval_dir.as_os_str(),
            "--n".as_ref(),
            "4".as_ref(),
            "--seed".as_ref(),
            "9".as_ref(),
        ])
        .output()
        .unwrap();
    ok(&synth_out);
    let out = tmp.path().join("run");
    let eval = eval_dir.join("data.jsonl");
    let mut args = sft_args(
        &synth(),
        &out,
        &["--steps", "40", "--batch", "4", "--lr", "1e-2", "--rank", "32", "--alpha", "32", "--save-every", "40"],
    );
    args.extend(["--eval".into(), eval.into()]);
    ok(&st(&args));
    let s: serde_json::Value = serde_json::from_slice(&bytes(&out.join("summary.json"))).unwrap();
    let (before, after) = (s["eval_loss_before"].as_f64().unwrap(), s["eval_loss_after"].as_f64().unwrap());
    // ln(1024) ≈ 6.93 is chance for the tiny vocabulary; 40 steps take it well below.
    assert!(after < before - 1.0, "held-out loss {before} → {after}");
}

#[test]
fn bad_rows_are_reported_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.jsonl");
    let good = std::fs::read_to_string(synth()).unwrap();
    let first =
        good.lines().next().unwrap().replace("images/", &format!("{}/", fixtures().join("synth/images").display()));
    let text = format!(
        "{first}\nnot json\n{}\n{}\n",
        first.replace("000000.png", "missing.png"),
        r#"{"images":["x.png"],"problem":"q? (A) a","answer_option_text":"(A) a"}"#
    );
    std::fs::write(&rows, text).unwrap();
    let out = tmp.path().join("run");
    let log = ok(&st(&sft_args(&rows, &out, &["--steps", "1", "--batch", "1"])));
    assert!(log.contains("line 2 skipped: bad JSON"), "{log}");
    assert!(log.contains("line 3 skipped") && log.contains("missing.png"), "{log}");
    assert!(log.contains("line 4 skipped") && log.contains("ground_truth"), "{log}");
    assert!(log.contains("1 rows used, 3 skipped"), "{log}");
}

#[test]
fn clear_errors_keep_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth();
    // Resuming with other settings names them.
    let run = tmp.path().join("run");
    ok(&st(&sft_args(&data, &run, &["--steps", "2", "--batch", "2", "--save-every", "1"])));
    let e =
        st(&sft_args(&data, &run, &["--steps", "2", "--batch", "2", "--save-every", "1", "--rank", "8", "--resume"]));
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("settings differ") && stderr.contains("rank"), "{stderr}");
    // Starting over in a used run directory without --resume is refused (nothing overwritten).
    let e = st(&sft_args(&data, &run, &["--steps", "2", "--batch", "2"]));
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--resume"));
    // A NaN / inf loss stops the run with the step and the last good checkpoint.
    let nan = tmp.path().join("nan");
    let e = st(&sft_args(
        &data,
        &nan,
        &[
            "--steps",
            "20",
            "--batch",
            "2",
            "--lr",
            "1e30",
            "--warmup",
            "0",
            "--save-every",
            "1",
            "--max-grad-norm",
            "0",
        ],
    ));
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("not finite") && stderr.contains("checkpoints/step-"), "{stderr}");
    assert!(st_checkpoint::LoraAdapter::open(nan.join("adapter")).is_ok());
    // A checkpoint directory without weights.
    let empty = tmp.path().join("ckpt");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(model("tiny").join("config.json"), empty.join("config.json")).unwrap();
    let out = tmp.path().join("x");
    let e = Command::new(env!("CARGO_BIN_EXE_st"))
        .args([
            "finetune".as_ref(),
            "--sft".as_ref(),
            "--model".as_ref(),
            empty.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("no weights found"), "{stderr}");
}

/// A rollouts file from the committed synthetic rows: per row four completions of different
/// rewards (the ground truth's own response, a wrong answer, one without a scene, plain text).
fn rollouts_file(dir: &Path, group: usize, drop_ground_truth: bool) -> std::path::PathBuf {
    let images = fixtures().join("synth");
    let mut out = String::new();
    for line in std::fs::read_to_string(synth()).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row: st::data::Row = serde_json::from_value(v.clone()).unwrap();
        let good = st::data::completion::completion(&row).unwrap();
        let wrong = good.replace(&row.answer_option_text, "(Z) nothing");
        let no_scene = format!("<observe> x </observe><think> y </think><answer> {} </answer>", row.answer_option_text);
        let all = [good, wrong, no_scene, "I do not know.".to_string()];
        v["completions"] = serde_json::json!(all[..group]);
        let img = v["images"][0].as_str().unwrap().to_string();
        v["images"] = serde_json::json!([images.join(img).display().to_string()]);
        if drop_ground_truth {
            v.as_object_mut().unwrap().remove("ground_truth");
        }
        out += &format!("{v}\n");
    }
    let path = dir.join(format!("rollouts-{group}-{drop_ground_truth}.jsonl"));
    std::fs::write(&path, out).unwrap();
    path
}

fn grpo_args(rollouts: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--model".into(), model("tiny").into(), "--rollouts".into(), rollouts.into()];
    v.extend(["--out".into(), out.into()]);
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Two GRPO steps of 2 prompts × 3 sampled rollouts, saved after each.
const TWO_STEPS: [&str; 10] =
    ["--steps", "2", "--group", "3", "--prompts-per-step", "2", "--lr", "1e-3", "--save-every", "1"];

/// `st finetune` arguments for GRPO on rollouts sampled from the tiny model for the committed rows.
fn policy_args(out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> =
        vec!["--model".into(), model("tiny").into(), "--data".into(), synth().into(), "--out".into(), out.into()];
    v.extend(extra.iter().map(OsString::from));
    v
}

#[test]
fn grpo_on_given_rollouts_writes_the_run_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = rollouts_file(tmp.path(), 4, false);
    let fast = [
        "--steps",
        "3",
        "--prompts-per-step",
        "2",
        "--save-every",
        "1",
        "--lr",
        "1e-3",
        "--epochs-per-batch",
        "2",
        "--warmup",
        "1",
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&st(&grpo_args(&file, &a, &fast)));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in [
        "step",
        "loss",
        "pg_loss",
        "kl",
        "clip_frac",
        "grad_norm",
        "reward_mean",
        "reward_std",
        "accuracy",
        "format",
        "lr",
        "zero_spread_groups",
        "completion_length",
        "rollout_seconds",
        "train_seconds",
    ] {
        assert!(line[key].is_number(), "{key} missing from {line}");
    }
    // The four completions of a row have different rewards: the ground truth's own scores highest.
    assert!(line["reward_std"].as_f64().unwrap() > 0.1, "{line}");
    let config: serde_json::Value = serde_json::from_slice(&bytes(&a.join("config.json"))).unwrap();
    assert_eq!(config["update"]["loss"]["kl_coef"], 0.01);
    assert_eq!(config["update"]["loss"]["clip_high"], 0.3);
    assert_eq!(config["group"], 4);
    for f in [
        "samples.jsonl",
        "reward.png",
        "checkpoints/step-0/adapter/adapter_model.safetensors",
        "checkpoints/step-3/optimizer.safetensors",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // Interrupted after step 2 and resumed: the same adapter, bit for bit.
    ok(&st(&grpo_args(&file, &b, &fast)));
    std::fs::remove_dir_all(b.join("checkpoints/step-3")).unwrap();
    let mut resume = fast.to_vec();
    resume.push("--resume");
    ok(&st(&grpo_args(&file, &b, &resume)));
    let adapter = |d: &Path| bytes(&d.join("adapter/adapter_model.safetensors"));
    assert_eq!(adapter(&a), adapter(&b));
    assert_eq!(std::fs::read_to_string(b.join("metrics.jsonl")).unwrap().lines().count(), 3);
}

#[test]
fn grpo_bad_rollouts_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let one = rollouts_file(tmp.path(), 1, false);
    let e = st(&grpo_args(&one, &tmp.path().join("x"), &["--steps", "1"]));
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("at least 2"), "{stderr}");
    let no_gt = rollouts_file(tmp.path(), 2, true);
    let e = st(&grpo_args(&no_gt, &tmp.path().join("y"), &["--steps", "1"]));
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("line 1") && stderr.contains("ground_truth"), "{stderr}");
    let e = Command::new(env!("CARGO_BIN_EXE_st"))
        .args([
            "finetune".as_ref(),
            "--model".as_ref(),
            model("tiny").as_os_str(),
            "--out".as_ref(),
            tmp.path().join("z").as_os_str(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.contains("--rollouts"), "{stderr}");
}

/// Starts `st finetune ARGS`, sends it SIGINT (Ctrl-C) once `metrics.jsonl` in `out` has two
/// lines, and returns its output.
fn interrupt_after_two_steps(args: &[OsString], out: &Path) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_st"))
        .arg("finetune")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        assert!(t0.elapsed().as_secs() < 300, "no second step within 300 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}

#[test]
fn kill_9_during_checkpoint_saves_leaves_only_whole_checkpoints() {
    // SIGKILL at several points of an SFT run that saves every step (during and around the saves):
    // every `checkpoints/step-N` left loads (its PEFT adapter and state), `adapter/` is absent or
    // loads, a half-written save is only ever a hidden temporary folder, and --resume from what is
    // left ends with the uninterrupted run's adapter, bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    let extra =
        ["--steps", "6", "--batch", "2", "--micro-batch", "2", "--lr", "1e-3", "--warmup", "2", "--save-every", "1"];
    let whole = tmp.path().join("whole");
    ok(&st(&sft_args(&synth(), &whole, &extra)));
    let adapter = |d: &Path| bytes(&d.join("adapter/adapter_model.safetensors"));
    for (k, delay_ms) in [(1usize, 0u64), (2, 3), (3, 8), (4, 20)] {
        let out = tmp.path().join(format!("kill{k}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_st"))
            .arg("finetune")
            .args(sft_args(&synth(), &out, &extra))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let metrics = out.join("metrics.jsonl");
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < k {
            assert!(t0.elapsed().as_secs() < 300, "no step {k} within 300 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
        let checkpoints = out.join("checkpoints");
        for entry in std::fs::read_dir(&checkpoints).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // a save cut short: hidden, never read as a checkpoint
            }
            assert!(name.starts_with("step-"), "kill {k}: {name} in checkpoints/");
            let a = st_checkpoint::LoraAdapter::open(entry.path().join("adapter"));
            assert!(a.is_ok(), "kill {k}: {name}: {:?}", a.err());
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path().join("trainer_state.json")).unwrap())
                    .unwrap_or_else(|e| panic!("kill {k}: {name}: {e}"));
            assert!(state.is_object());
        }
        if out.join("adapter").exists() {
            let a = st_checkpoint::LoraAdapter::open(out.join("adapter"));
            assert!(a.is_ok(), "kill {k}: adapter/: {:?}", a.err());
        }
        let mut resume: Vec<&str> = extra.to_vec();
        resume.push("--resume");
        ok(&st(&sft_args(&synth(), &out, &resume)));
        assert_eq!(adapter(&out), adapter(&whole), "kill {k}: resumed ≠ uninterrupted");
        // The resumed run removed what the killed one left half-written.
        for d in [out.clone(), checkpoints] {
            let hidden: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(hidden.is_empty(), "kill {k}: left in {}: {hidden:?}", d.display());
        }
    }
}

#[test]
fn ctrl_c_saves_the_current_step_and_resume_finishes_the_same_run() {
    // SFT and GRPO (given rollouts): Ctrl-C after step ≥ 2 of 40 with checkpoints every 100 steps
    // stops after the current step, saves it as a loadable checkpoint (PEFT adapter included) and
    // exits 130; --resume then ends with the uninterrupted run's adapter, bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    let rollouts = rollouts_file(tmp.path(), 4, false);
    let common = ["--steps", "40", "--save-every", "100", "--lr", "1e-3", "--warmup", "2"];
    for kind in ["sft", "grpo"] {
        let args = |out: &Path, resume: bool| {
            let mut extra: Vec<&str> = common.to_vec();
            if kind == "sft" {
                extra.extend(["--batch", "2", "--micro-batch", "2"]);
            } else {
                extra.extend(["--prompts-per-step", "1"]);
            }
            if resume {
                extra.push("--resume");
            }
            if kind == "sft" { sft_args(&synth(), out, &extra) } else { grpo_args(&rollouts, out, &extra) }
        };
        let (a, b) = (tmp.path().join(format!("{kind}-a")), tmp.path().join(format!("{kind}-b")));
        ok(&st(&args(&a, false)));
        let stopped = interrupt_after_two_steps(&args(&b, false), &b);
        let stderr = String::from_utf8_lossy(&stopped.stderr);
        assert_eq!(stopped.status.code(), Some(130), "{kind}: {stderr}");
        let done = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap().lines().count();
        assert!((2..40).contains(&done), "{kind}: {done} steps before the interrupt took effect");
        let last = format!("step-{done}");
        assert!(stderr.contains(&format!("checkpoints/{last}; continue with --resume")), "{kind}: {stderr}");
        let adapter = st_checkpoint::LoraAdapter::open(b.join("checkpoints").join(&last).join("adapter"));
        assert!(adapter.is_ok(), "{kind}: {:?}", adapter.err());
        assert_eq!(bytes(&b.join("adapter/adapter_model.safetensors")), {
            bytes(&b.join("checkpoints").join(&last).join("adapter/adapter_model.safetensors"))
        });
        ok(&st(&args(&b, true)));
        let final_adapter = |d: &Path| bytes(&d.join("adapter/adapter_model.safetensors"));
        assert_eq!(final_adapter(&a), final_adapter(&b), "{kind}: resumed after Ctrl-C ≠ uninterrupted");
    }
}

#[test]
fn grpo_raises_the_reward_beyond_its_noise() {
    // The CI-sized learning check: two GRPO runs on the committed rows with the same seed — the
    // same prompts and sampling seeds at every step — one at lr 0 (the policy as it is: the noise
    // of the sampled rewards) and one at lr 5e-3. Over the second half (steps 16-30), the trained
    // run's mean reward exceeds the untrained one's by more than 2 standard errors of the paired
    // per-step differences, and by at least 0.03. Measured on this machine (docs/TRAINING.md):
    // +0.105 (z 2.7), +0.062 (z 2.4), +0.117 (z 5.9) for seeds 1, 2, 3; seed 3 runs here.
    let tmp = tempfile::tempdir().unwrap();
    let rewards = |lr: &str| {
        let out = tmp.path().join(format!("lr-{lr}"));
        let args = policy_args(
            &out,
            &[
                "--steps",
                "30",
                "--group",
                "4",
                "--prompts-per-step",
                "4",
                "--max-new-tokens",
                "120",
                "--temperature",
                "1.0",
                "--lr",
                lr,
                "--warmup",
                "2",
                "--save-every",
                "100",
                "--grammar",
                "--seed",
                "3",
            ],
        );
        ok(&st(&args));
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward_mean"].as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let (base, trained) = (rewards("0"), rewards("5e-3"));
    assert_eq!(base[0], trained[0], "step 1 samples the same rollouts in both runs");
    let d: Vec<f64> = base[15..].iter().zip(&trained[15..]).map(|(b, t)| t - b).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let se = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt();
    assert!(mean > 2.0 * se && mean >= 0.03, "reward gain {mean:.3} ± {se:.3} (base {base:?}, trained {trained:?})");
}

#[test]
fn grpo_warns_when_every_reward_of_the_run_is_equal() {
    // Completions that all score 0: the run finishes, every group is zero-spread, and it says
    // that nothing was learned.
    let tmp = tempfile::tempdir().unwrap();
    let file = rollouts_file(tmp.path(), 2, false);
    let text = std::fs::read_to_string(&file).unwrap();
    let same: String = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["completions"] = serde_json::json!(["I do not know.", "No idea."]);
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&file, same).unwrap();
    let run = tmp.path().join("run");
    let args = ["--steps", "2", "--prompts-per-step", "2", "--save-every", "1"];
    let out = ok(&st(&grpo_args(&file, &run, &args)));
    assert!(out.contains("every reward of the run was 0") && out.contains("learned nothing"), "{out}");
    assert!(out.contains("zero-spread groups 4"), "{out}");
    // Resumed after step 1: the count includes the groups of step 1.
    std::fs::remove_dir_all(run.join("checkpoints/step-2")).unwrap();
    let out = ok(&st(&grpo_args(&file, &run, &[&args[..], &["--resume"]].concat())));
    assert!(out.contains("zero-spread groups 4"), "{out}");
}

#[test]
fn grpo_samples_rollouts_from_the_policy() {
    // Rollouts sampled from the tiny model for the committed rows: with --grammar every one is a
    // valid response; without it the valid rate is reported (0 for random weights).
    let tmp = tempfile::tempdir().unwrap();
    for (grammar, out) in [(true, tmp.path().join("g")), (false, tmp.path().join("n"))] {
        let mut args =
            policy_args(&out, &[&TWO_STEPS[..], &["--max-new-tokens", "120", "--temperature", "1.0"]].concat());
        if grammar {
            args.push("--grammar".into());
        }
        ok(&st(&args));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        for l in metrics.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let rate = v["valid_rate"].as_f64().unwrap();
            if grammar {
                assert_eq!(rate, 1.0, "{v}");
                assert_eq!(v["format"].as_f64().unwrap(), 1.0, "{v}");
            } else {
                assert!((0.0..=1.0).contains(&rate), "{v}");
            }
        }
        let config: serde_json::Value = serde_json::from_slice(&bytes(&out.join("config.json"))).unwrap();
        assert_eq!(config["rollouts"]["grammar"], grammar);
        assert_eq!(config["rollouts"]["source"], "policy");
        let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
        assert!(samples.lines().count() >= 2 && samples.contains("\"completion\""));
    }
}

#[test]
fn grpo_with_sampled_rollouts_resumes_exactly() {
    // Rollouts are seeded per step, prompt and sequence: a run interrupted after step 1 and
    // resumed samples the same completions and ends with the same adapter, bit for bit.
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, resume: bool| {
        let mut args = policy_args(out, &[&TWO_STEPS[..], &["--max-new-tokens", "60"]].concat());
        if resume {
            args.push("--resume".into());
        }
        ok(&st(&args));
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&a, false);
    run(&b, false);
    std::fs::remove_dir_all(b.join("checkpoints/step-2")).unwrap();
    run(&b, true);
    let adapter = |d: &Path| bytes(&d.join("adapter/adapter_model.safetensors"));
    assert_eq!(adapter(&a), adapter(&b));
    assert_eq!(
        std::fs::read_to_string(a.join("samples.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("samples.jsonl")).unwrap()
    );
}

//! `st bench`: latency of the whole path on this device — time to first token split into
//! preprocess / vision / prompt prefill, the same for a second question on the frame, decode
//! tokens/s, peak RSS — as median / min / max over runs, with the device and model described so
//! runs on different machines compare line by line.

use crate::engine::{Engine, GenerateOptions};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Image to encode (default: the bundled chelsea.png).
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, default_value = "Is the cat to the left of the table? (A) yes (B) no")]
    pub question: String,
    /// Timed runs (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Tokens decoded per run (end-of-turn ignored so every run decodes the same count).
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Decode under the output grammar (off by default so decode speed is the model's own; with
    /// it, forced tokens share decoder passes and tokens/s rises).
    #[arg(long)]
    pub grammar: bool,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// One round of benches/peers' side-by-side workload, as JSON: decode after a text prompt and
    /// after the image prompt, a `--prompt-tokens` prefill, vision, image prefill, TTFT, a second
    /// question, and `--constrained-tokens` under the grammar (`--tokens` decoded; `--runs` unused).
    #[arg(long)]
    pub peers: bool,
    /// Exact speculation: up to N prompt-lookup draft tokens per decoder pass (0 = off).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub speculate: usize,
    /// Text tokens of the prefill measure of `--peers`.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Token limit of the constrained measure of `--peers`.
    #[arg(long, default_value_t = 256)]
    pub constrained_tokens: usize,
    /// A soak instead: N sampled, grammar-constrained questions over changing frames, every answer
    /// validated, RSS and open descriptors compared after the warm-up (JSON; exit 1 on a failure).
    #[arg(long, value_name = "N")]
    pub soak: Option<usize>,
    /// Questions per frame in `--soak`.
    #[arg(long, default_value_t = 10)]
    pub soak_per_frame: usize,
}

/// Median, min and max of one measure over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN) }
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub host: serde_json::Value,
    pub model: serde_json::Value,
    pub workload: serde_json::Value,
    /// Milliseconds unless named otherwise.
    pub results: std::collections::BTreeMap<&'static str, Stat>,
    pub peak_rss_mib: Option<f64>,
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// A kB field of `/proc/self/status` (`VmHWM:`, `VmRSS:`, …), in MiB.
pub fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn describe(engine: &Engine, args: &BenchArgs) -> (serde_json::Value, serde_json::Value) {
    let m = engine.model();
    let t = &m.manifest.config.text;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let host = serde_json::json!({
        "cpu": cpu_name(), "logical_cpus": threads, "device": m.device.to_string(),
        "intra_op_threads": args.model.threads, "onnxruntime": crate::engine::ort_lib::ORT_VERSION,
        "cpu_kernels": crate::engine::ops::cpu_builds(),
    });
    let precision: std::collections::BTreeMap<&str, &std::collections::BTreeMap<String, String>> =
        m.manifest.graphs.iter().map(|(k, g)| (k.as_str(), &g.precision)).collect();
    let model = serde_json::json!({
        "dir": m.dir, "layers": t.num_hidden_layers, "hidden": t.hidden_size, "vocab": t.vocab_size,
        "decoder_attention": if m.decoder_uses_gqa { "group_query" } else { "standard" },
        "kv_cache": match (&m.kv_place, m.decoder_uses_gqa) {
            (_, false) => "host arrays (concatenated in the graph)".to_string(),
            (crate::engine::KvPlace::Host, true) => "host buffers, appended in place".to_string(),
            (crate::engine::KvPlace::Allocator(info), true) => {
                format!("{} {} buffers, appended in place", info.allocation_device().as_str(), info.device_id())
            }
        },
        "precision": precision,
    });
    (host, model)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut engine = args.model.engine(&args.pixels)?;
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/chelsea.png"));
    let opts = GenerateOptions {
        max_new_tokens: Some(args.tokens.max(2)),
        ignore_eos: true,
        grammar: args.grammar,
        speculate: args.speculate,
        ..Default::default()
    };
    if let Some(n) = args.soak {
        let mut report = super::soak::run(&mut engine, n, args.soak_per_frame, args.tokens, args.image.as_deref())?;
        let (host, model) = describe(&engine, &args);
        (report["host"], report["model"]) = (host, model);
        let verdict = super::soak::verdict(&report);
        report["passed"] = verdict.is_ok().into();
        println!("{}", serde_json::to_string_pretty(&report)?);
        return verdict.map_err(|reason| anyhow::anyhow!("soak failed: {reason}"));
    }
    if args.peers {
        let t = std::time::Instant::now();
        let mut round = super::bench_peers::round(
            &mut engine,
            &image,
            &args.question,
            args.tokens,
            args.prompt_tokens,
            args.constrained_tokens,
            args.speculate,
        )?;
        let (host, model) = describe(&engine, &args);
        round["host"] = host;
        round["model"] = model;
        round["seconds"] = serde_json::json!(t.elapsed().as_secs_f64());
        println!("{round}");
        return Ok(());
    }
    let mut cols: std::collections::BTreeMap<&'static str, Vec<f64>> = Default::default();
    let mut workload = serde_json::Value::Null;
    for run in 0..=args.runs {
        let frame = engine.encode_image(&image)?;
        let first = engine.ask(&frame, &args.question, &opts)?;
        let second = engine.ask(&frame, &args.question, &opts)?;
        if run == 0 {
            workload = serde_json::json!({
                "image": image, "original_size": frame.image.original_size, "resized_size": frame.image.resized_size,
                "prompt_tokens": first.prompt_tokens, "frame_prefix_tokens": frame.timings.prefix_tokens,
                "question_tokens": first.prompt_tokens - first.reused_prompt_tokens,
                "decode_tokens": first.token_ids.len(), "runs": args.runs, "grammar": args.grammar,
            });
            continue; // warm-up
        }
        let t = &first.timings;
        let mut push = |k, v| cols.entry(k).or_default().push(v);
        push("preprocess_ms", t.preprocess_ms);
        push("vision_ms", t.vision_ms);
        push("prefix_prefill_ms", t.prefix_prefill_ms);
        push("question_prefill_ms", t.prefill_ms);
        push("ttft_new_frame_ms", t.preprocess_ms + t.vision_ms + t.prefix_prefill_ms + t.prefill_ms);
        push("ttft_same_frame_ms", second.timings.prefill_ms);
        let passes: f64 = t.decode_ms.iter().chain(&second.timings.decode_ms).sum();
        let tokens = t.decode_tokens + second.timings.decode_tokens;
        // Under the grammar a short run may be all forced tokens: no decode figure then.
        if tokens > 0 && passes > 0.0 {
            let per_token = passes / tokens as f64;
            push("decode_ms_per_token", per_token);
            push("decode_tokens_per_s", 1e3 / per_token);
        }
    }
    let (host, model) = describe(&engine, &args);
    let report = BenchReport {
        host,
        model,
        workload,
        results: cols.into_iter().map(|(k, v)| (k, Stat::of(v))).collect(),
        peak_rss_mib: peak_rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("host     {}", report.host);
        println!("model    {}", report.model);
        println!("workload {}", report.workload);
        println!("{:<22} {:>10} {:>10} {:>10}", "", "median", "min", "max");
        for (k, s) in &report.results {
            println!("{k:<22} {:>10.2} {:>10.2} {:>10.2}", s.median, s.min, s.max);
        }
        if let Some(r) = report.peak_rss_mib {
            println!("{:<22} {r:>10.0}", "peak_rss_mib");
        }
    }
    Ok(())
}

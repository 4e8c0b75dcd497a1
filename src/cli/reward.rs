//! `st reward --input FILE.jsonl [--output FILE.jsonl]`: score any model's completions with the
//! dense spatial reward (docs/FORMATS.md#the-dense-reward). Each input line has `completion`, `ground_truth` and either
//! `problem` (the prompt, for its image size) or `image_size: [W, H]`; each output line has
//! `overall`, `format`, `count`, `accuracy`, `spatial`, in input order. A bad line gets an
//! `error` field on its output line and does not stop the run.

use crate::reward::{ExactLabels, Weights, image_size_from_prompt, reward, sparse_reward};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct RewardArgs {
    /// JSON lines with completion, ground_truth and problem (or image_size).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the scores (default: standard output); written to a temporary file first.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The sparse variant (R = accuracy), for ablations.
    #[arg(long)]
    pub sparse: bool,
}

#[derive(serde::Deserialize)]
struct Line {
    completion: String,
    ground_truth: String,
    problem: Option<String>,
    image_size: Option<[f64; 2]>,
}

/// The score line for one input line (an `error` field for a line that is not a reward line).
pub fn score_line(line: &str, sparse: bool) -> serde_json::Value {
    let parsed: Line = match serde_json::from_str(line) {
        Ok(l) => l,
        Err(e) => return serde_json::json!({ "error": format!("not a reward line: {e}") }),
    };
    if sparse {
        return serde_json::json!({ "overall": sparse_reward(&parsed.completion, &parsed.ground_truth) });
    }
    let size = match (parsed.image_size, parsed.problem.as_deref().and_then(image_size_from_prompt)) {
        (Some([w, h]), _) | (None, Some((w, h))) if w > 0.0 && h > 0.0 => (w, h),
        _ => {
            return serde_json::json!({ "error": "no positive image size: give `image_size: [W, H]` or a `problem` with `Image size: W x H`" });
        }
    };
    let r = reward(&parsed.completion, &parsed.ground_truth, size, &Weights::default(), &ExactLabels);
    serde_json::to_value(r).unwrap_or_default()
}

pub fn run(args: RewardArgs) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(&args.input).map_err(|e| anyhow::anyhow!("--input {}: {e}", args.input.display()))?;
    let mut out = String::new();
    let (mut n, mut bad) = (0, 0);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("--input {} line {}: {e}", args.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = score_line(&line, args.sparse);
        bad += usize::from(v.get("error").is_some());
        n += 1;
        out.push_str(&v.to_string());
        out.push('\n');
    }
    match &args.output {
        Some(path) => super::write_then_rename(path, out.as_bytes(), "--output")?,
        None => std::io::stdout().write_all(out.as_bytes())?,
    }
    eprintln!("{n} lines scored, {bad} with errors");
    Ok(())
}

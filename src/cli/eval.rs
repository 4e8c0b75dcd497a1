//! `st eval --data FILE.jsonl [--model DIR] [--limit N] [--output results.jsonl] [--json]`: run the
//! model on STVQA-format rows (grammar on unless `--no-grammar`) and report accuracy per category
//! and overall, the mean reward and its components (rows with a ground-truth scene), the validity
//! rate and timings. With `--output`, each row's record is appended as it finishes and rows
//! already there are skipped on restart, so an interrupted run resumes. Bad rows (bad JSON, a
//! missing image) are reported and skipped.

use crate::data::Row;
use crate::data::eval::{Record, run_row, summarize};
use crate::engine::GenerateOptions;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// STVQA-format JSON lines (images relative to the file).
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Evaluate the first N rows only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Append per-row records here and resume from it.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// New tokens per row [default: 2048, or what the context leaves after the prompt if less].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub no_grammar: bool,
    #[command(flatten)]
    pub pixels: super::PixelArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Records already in `path` (lines that do not parse are ignored and redone).
fn done_records(path: &std::path::Path) -> anyhow::Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("--output {}: {e}", path.display()))?;
    Ok(std::io::BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect())
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.data).map_err(|e| anyhow::anyhow!("--data {}: {e}", args.data.display()))?;
    let base = args.data.parent().map(PathBuf::from).unwrap_or_default();
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty()).take(args.limit.unwrap_or(usize::MAX)).collect();
    let mut records = match &args.output {
        Some(p) => done_records(p)?,
        None => Vec::new(),
    };
    let done: BTreeSet<usize> = records.iter().map(|r| r.index).collect();
    let mut out = match &args.output {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("--output {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut engine = args.model.engine(&args.pixels)?;
    let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, grammar: !args.no_grammar, ..Default::default() };
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_position(done.len() as u64);
    for (index, line) in lines.iter().enumerate() {
        if done.contains(&index) {
            continue;
        }
        let record = match serde_json::from_str::<Row>(line) {
            Ok(row) => run_row(&mut engine, &base, index, &row, &opts),
            Err(e) => Record::failed(index, format!("line {}: {e}", index + 1)),
        };
        if let Some(e) = &record.error {
            bar.suspend(|| eprintln!("row {index} skipped: {e}"));
        }
        if let Some(f) = &mut out {
            writeln!(f, "{}", serde_json::to_string(&record)?)?;
            f.flush()?;
        }
        records.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    records.retain(|r| r.index < lines.len());
    let s = summarize(&records);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("{:<20} {:>6} {:>9}", "category", "rows", "accuracy");
    for (name, c) in &s.categories {
        println!("{name:<20} {:>6} {:>8.1}%", c.rows, c.accuracy * 100.0);
    }
    println!("{:<20} {:>6} {:>8.1}%", "overall", s.rows, s.accuracy * 100.0);
    println!("valid responses      {:>6.1}%", s.valid_rate * 100.0);
    if let Some(r) = &s.reward {
        println!(
            "reward               {:.3} (format {:.3}, count {:.3}, accuracy {:.3}, spatial {:.3})",
            r.overall, r.format, r.count, r.accuracy, r.spatial
        );
    }
    println!(
        "mean TTFT {:.0} ms, mean decode {:.1} tokens/s; {} rows skipped",
        s.mean_ttft_ms, s.mean_decode_tokens_per_s, s.errors
    );
    Ok(())
}

//! `st data synth --out DIR --n N --seed S`: a synthetic spatial dataset (see
//! [`crate::data::synth`]): `DIR/data.jsonl` (STVQA rows with ground-truth scenes) and
//! `DIR/images/*.png`, written into a temporary folder renamed at the end.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Render scenes of simple shapes with known boxes and write questions about them.
    Synth(SynthArgs),
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (each gets up to three questions).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let DataCommand::Synth(a) = args.command;
    if a.out.exists() {
        anyhow::bail!("--out {}: already exists; choose a new folder", a.out.display());
    }
    let tmp = super::partial_path(&a.out);
    let write = || -> anyhow::Result<usize> {
        std::fs::create_dir_all(tmp.join("images"))?;
        let mut lines = String::new();
        let mut rows = 0;
        for (path, sample) in crate::data::synth::generate(a.n, a.seed) {
            sample.image.save(tmp.join(&path)).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            for r in &sample.rows {
                lines.push_str(&serde_json::to_string(r)?);
                lines.push('\n');
                rows += 1;
            }
        }
        std::fs::write(tmp.join("data.jsonl"), lines)?;
        Ok(rows)
    };
    match write() {
        Ok(rows) => {
            std::fs::rename(&tmp, &a.out)?;
            eprintln!("{rows} rows about {} images in {}", a.n, a.out.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

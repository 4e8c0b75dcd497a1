//! `st-run IMAGE "QUESTION"`: the same as `st run`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "st-run", version, about = "Ask SpatialThinker a spatial question about an image")]
struct Args {
    #[command(flatten)]
    run: st::cli::run::RunArgs,
}

fn main() -> anyhow::Result<()> {
    st::cli::init_logging();
    st::cli::run::run(Args::parse().run)
}

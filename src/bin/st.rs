use clap::Parser;
use st::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    st::cli::init_logging();
    match Cli::parse().command {
        Command::Inspect(args) => st::cli::inspect::run(args),
        Command::Run(args) => st::cli::run::run(args),
        Command::Export(args) => st::cli::export::run(args),
        Command::Bench(args) => st::cli::bench::run(args),
        Command::Reward(args) => st::cli::reward::run(args),
        Command::Eval(args) => st::cli::eval::run(args),
        Command::Data(args) => st::cli::data::run(args),
        Command::Doctor(args) => st::cli::doctor::run(args),
        Command::Serve(args) => st::cli::serve::run(args),
        Command::Finetune(args) => st::cli::finetune::run(args),
    }
}

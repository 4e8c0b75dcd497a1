//! `st-serve` (run as `st serve`): load the model, then serve it until SIGINT/SIGTERM.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = st_serve::ServeArgs::parse();
    st_serve::init_logging();
    match st_serve::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `st serve`: runs the `st-serve` binary built beside `st` (crate `serve/`, which keeps axum and
//! tokio out of the runtime) with the same arguments, as git and cargo run their subcommands.

use std::ffi::OsString;

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// Every option of `st-serve` (`st serve --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let server = exe.with_file_name(format!("st-serve{}", std::env::consts::EXE_SUFFIX));
    if !server.is_file() {
        anyhow::bail!(
            "st serve runs {}, which is not built: `cargo build --release --bins` builds it beside st \
             (or `cargo build --release -p st-serve`)",
            server.display()
        );
    }
    let mut command = std::process::Command::new(&server);
    command.args(&args.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = command.exec(); // returns only on failure
        anyhow::bail!("running {}: {e}", server.display())
    }
    #[cfg(not(unix))]
    {
        let status = command.status().map_err(|e| anyhow::anyhow!("running {}: {e}", server.display()))?;
        std::process::exit(status.code().unwrap_or(1))
    }
}

//! `elara`: the daemon and its command line in one binary. Argument parsing and a call into the
//! library (`src/lib.rs`, where the module map is).

use clap::{CommandFactory, Parser};

use elara::cli::{self, Cli, Command};
use elara::{config, server};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Daemon(_) | Command::NfsFuse(_));
    if !daemon {
        // A command's reader may go away (`elara info | head`): end quietly, as other tools do,
        // rather than panic on the write. The daemon keeps Rust's default (EPIPE as an error).
        // SAFETY: setting a signal's disposition to the default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_tracing(daemon);
    if let Command::NfsFuse(args) = cli.command {
        // A helper process of its own, with its own runtime (the library starts it).
        return match nfs_fuse(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Daemon(ref args) => {
                let cfg = config::Config::resolve(args, &cli.socket)?;
                server::run(cfg).await
            }
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "elara", &mut std::io::stdout());
                Ok(())
            }
            _ => cli::run(cli).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("ELARA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// `elara nfs-fuse`: record the pid, then serve the export until it is unmounted.
fn nfs_fuse(args: cli::NfsFuseArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(pid_file) = &args.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
    }
    let mut opts = elara_nfs_fuse::MountOptions::new(args.server, args.export, args.mountpoint);
    opts.port = args.port;
    opts.mount_port = args.mount_port;
    opts.read_only = args.read_only;
    opts.io_timeout = std::time::Duration::from_secs(args.io_timeout.max(1));
    elara_nfs_fuse::serve(opts)
}

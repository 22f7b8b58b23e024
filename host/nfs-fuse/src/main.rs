//! `elara-nfs-fuse SERVER[:PORT] EXPORT MOUNTPOINT [--mount-port N] [--ro] [--io-timeout SECS]
//! [--attr-timeout SECS]`: serve one NFS export at MOUNTPOINT until unmounted or SIGTERM/SIGINT.
//! The daemon runs the same library through `elara nfs-fuse`; this binary is for tests,
//! benchmarks and manual use. Logs go to stderr (`RUST_LOG` filters, default `info`).

use std::time::Duration;

use anyhow::{Context, bail};
use elara_nfs_fuse::{MountOptions, serve};

fn usage() -> ! {
    eprintln!(
        "usage: elara-nfs-fuse SERVER[:PORT] EXPORT MOUNTPOINT [--mount-port N] [--ro] [--io-timeout SECS] \
         [--attr-timeout SECS]"
    );
    std::process::exit(2)
}

fn secs(v: Option<String>) -> anyhow::Result<Duration> {
    let v = v.context("a number of seconds")?;
    Ok(Duration::from_secs_f64(
        v.parse::<f64>()
            .with_context(|| format!("{v:?} is not a number of seconds"))?,
    ))
}

fn parse() -> anyhow::Result<MountOptions> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut opts = MountOptions::new("", "", "");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mount-port" => opts.mount_port = Some(args.next().context("--mount-port N")?.parse()?),
            "--ro" => opts.read_only = true,
            "--io-timeout" => opts.io_timeout = secs(args.next())?,
            "--attr-timeout" => opts.attr_timeout = secs(args.next())?,
            "-h" | "--help" => usage(),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(a),
        }
    }
    let [server, export, mountpoint] = <[String; 3]>::try_from(positional).unwrap_or_else(|_| usage());
    match server.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            opts.server = host.trim_start_matches('[').trim_end_matches(']').to_string();
            opts.port = port.parse().with_context(|| format!("port {port:?}"))?;
        }
        _ => opts.server = server,
    }
    opts.export = export;
    opts.mountpoint = mountpoint.into();
    Ok(opts)
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let res = parse().and_then(serve);
    if let Err(e) = res {
        eprintln!("elara-nfs-fuse: {e:#}");
        std::process::exit(1);
    }
}

//! The `elara` command line. Every command but `daemon`, `driver check` and `completions` talks to
//! the daemon's REST API over its unix socket.

mod backups;
mod bring_up;
pub mod client;
pub mod progress;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::{DEFAULT_SOCKET, DaemonArgs};
use client::{Client, enc};

#[derive(Parser)]
#[command(
    name = "elara",
    version,
    about = "Elara: container volumes on sandboxed WebAssembly storage drivers"
)]
pub struct Cli {
    /// The daemon's REST socket.
    #[arg(short = 's', long, global = true, env = "ELARA_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// `Daemon`'s arguments dwarf the other commands'; the enum is parsed once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Version, store, node, drivers, backends and pools.
    Info,
    /// Cluster nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Driver components (.wasm).
    #[command(subcommand)]
    Driver(DriverCmd),
    /// Backends: named, configured instances of a driver.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Pools reported by backends.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Operations in flight.
    #[command(subcommand)]
    Op(OpCmd),
    /// Volume types: named sets of scheduler specs.
    #[command(subcommand)]
    Type(TypeCmd),
    /// Placement: why a volume would go where.
    #[command(subcommand)]
    Scheduler(SchedulerCmd),
    /// Backups of block volumes (as blocks) and of file and object volumes (as trees) to a
    /// directory or S3 target, with verify and restore.
    #[command(subcommand)]
    Backup(backups::BackupCmd),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve one NFS export as a FUSE file system until it is unmounted or SIGTERM arrives: the
    /// user-space NFS client the daemon starts for each NFS volume it mounts where the kernel
    /// has no NFS client.
    #[command(hide = true)]
    NfsFuse(NfsFuseArgs),
}

#[derive(clap::Args, Debug)]
pub struct NfsFuseArgs {
    #[arg(long)]
    pub server: String,
    #[arg(long, default_value_t = 2049)]
    pub port: u16,
    /// The MOUNT port (default: ask the portmapper).
    #[arg(long)]
    pub mount_port: Option<u16>,
    /// The MOUNT path of the volume's directory.
    #[arg(long)]
    pub export: String,
    #[arg(long)]
    pub mountpoint: std::path::PathBuf,
    #[arg(long)]
    pub read_only: bool,
    /// Seconds a call may go unanswered before it fails with EIO.
    #[arg(long, default_value_t = 30)]
    pub io_timeout: u64,
    /// Write this process's pid here first (the daemon's record of the helper).
    #[arg(long)]
    pub pid_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// This node (or NAME).
    Info {
        name: Option<String>,
    },
    List,
    /// Record a node before its daemon first starts.
    Register {
        name: String,
    },
    /// Remove a node that is down and holds nothing.
    Unregister {
        name: String,
    },
    /// Rename a node that is down.
    Rename {
        name: String,
        new_name: String,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    pub name: String,
    /// Size, e.g. 10G (default 1G, or the snapshot's size).
    #[arg(long, allow_hyphen_values = true)]
    pub size: Option<String>,
    #[arg(long)]
    pub backend: Option<String>,
    /// Any backend of this driver.
    #[arg(long = "driver")]
    pub driver: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// ext4 (default) or xfs.
    #[arg(long)]
    pub fs: Option<String>,
    /// Create from this snapshot.
    #[arg(long)]
    pub snapshot: Option<String>,
    #[arg(long)]
    pub iops: Option<u64>,
    /// Volume type.
    #[arg(long = "type")]
    pub volume_type: Option<String>,
    /// An inline scheduler spec KEY=VALUE in Cinder's syntax (`iops>=1000`, `tier=s== gold`), repeatable.
    #[arg(long = "spec", allow_hyphen_values = true)]
    pub specs: Vec<String>,
}

#[derive(Subcommand)]
pub enum TypeCmd {
    /// `elara type create gold --spec 'iops>=1000' --spec type=block`
    Create {
        name: String,
        /// KEY=VALUE in Cinder's extra-spec syntax, repeatable.
        #[arg(long = "spec", required = true, allow_hyphen_values = true)]
        specs: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Inspect {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SchedulerCmd {
    /// Every pool's fate for a request: the filter that rejected it and why, or its weight.
    /// Live (asks the daemon), or offline with --pools FILE (pools in Cinder's vocabulary).
    Explain {
        /// Size: a bare number is GB as in Cinder (`10`), or with a unit (`10G`, `512M`).
        #[arg(long, default_value = "1")]
        size: String,
        /// KEY=VALUE in Cinder's extra-spec syntax, repeatable.
        #[arg(long = "spec", allow_hyphen_values = true)]
        specs: Vec<String>,
        #[arg(long = "type")]
        volume_type: Option<String>,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long = "driver")]
        driver: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Explain offline over the pools in this JSON file instead of asking the daemon.
        #[arg(long)]
        pools: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    Create(CreateArgs),
    List {
        #[arg(long)]
        backend: Option<String>,
        /// key=value, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    Inspect {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Mount on this node; prints the mountpoint.
    Mount {
        name: String,
        /// Also bind-mount it here.
        #[arg(long)]
        path: Option<PathBuf>,
        /// A name for this holder (each holder unmounts separately).
        #[arg(long)]
        holder: Option<String>,
    },
    /// Drop this holder's mount; the last holder unmounts and detaches.
    #[command(alias = "umount")]
    Unmount {
        name: String,
        #[arg(long)]
        holder: Option<String>,
    },
    /// Grow a volume (and its mounted filesystem).
    Resize {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        size: String,
    },
    /// Usage figures from the driver.
    Stats {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    Create {
        volume: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        volume: Option<String>,
    },
    Inspect {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Restore into a new volume.
    Restore {
        name: String,
        #[arg(long = "to")]
        to: String,
        #[arg(long, allow_hyphen_values = true)]
        size: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DriverCmd {
    /// Validate and install a driver component; every node of the cluster can then load it.
    Install {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Replace an installed driver of the same name.
        #[arg(long)]
        upgrade: bool,
    },
    List,
    Inspect {
        name: String,
    },
    /// Remove a driver no backend uses.
    Remove {
        name: String,
    },
    /// Run the conformance suite against a throw-away backend of this driver (no daemon needed).
    Check {
        file: PathBuf,
        /// key=value, repeatable.
        #[arg(long = "config")]
        config: Vec<String>,
        /// host[:port] the driver may reach, repeatable.
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
        /// Also bring each attach up on this host (format, mount, write and read a file, take
        /// it down): the data path end to end. Needs root.
        #[arg(long)]
        attach: bool,
    },
}

#[derive(Args)]
pub struct BackendOpts {
    /// key=value, repeatable. Secrets belong in --config-file: argv is visible to every user in `ps`.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// A file of key=value lines (`#` comments), or `-` for standard input: for secrets, which
    /// then never appear in a process list or shell history.
    #[arg(long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// host[:port] this backend may reach over HTTP and TCP, repeatable.
    #[arg(long = "allow-host")]
    pub allow_hosts: Vec<String>,
    /// Memory cap of the sandbox, e.g. 256M.
    #[arg(long)]
    pub memory: Option<String>,
    /// Wall-clock limit per driver call, e.g. 5m.
    #[arg(long)]
    pub call_timeout: Option<String>,
}

#[derive(Subcommand)]
pub enum BackendCmd {
    Add {
        name: String,
        #[arg(long)]
        driver: String,
        #[command(flatten)]
        opts: BackendOpts,
    },
    List,
    Inspect {
        name: String,
    },
    /// Change config keys (key= removes one), grants or limits.
    Update {
        name: String,
        #[command(flatten)]
        opts: BackendOpts,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum PoolCmd {
    List,
    /// Ask every backend for fresh figures.
    Refresh,
}

#[derive(Subcommand)]
pub enum OpCmd {
    List,
}

/// `--spec KEY=VALUE` arguments, split as the scheduler reads them (`iops>=1000` → `iops`, `>= 1000`).
fn split_specs(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| elara_scheduler::parse_spec_arg(i).with_context(|| format!("--spec {i:?}")))
        .collect()
}

fn print_explanation(out: Output, v: &Value) {
    if out == Output::Json {
        return show(out, v);
    }
    println!("chosen: {}", v["chosen"].as_str().unwrap_or("none: no pool fits"));
    println!("ranked:");
    indented_table(out, &v["ranked"], &[("POOL", "/pool"), ("WEIGHT", "/weight")], "  ");
    println!("rejected:");
    indented_table(
        out,
        &v["rejected"],
        &[("POOL", "/pool"), ("FILTER", "/filter"), ("REASON", "/reason")],
        "  ",
    );
}

/// A backend's config: the `--config-file` lines first, then `--config` (which wins).
fn backend_config(opts: &BackendOpts) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut items = Vec::new();
    if let Some(path) = &opts.config_file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the config from standard input")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading --config-file {}", path.display()))?
        };
        items.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    items.extend(opts.config.iter().cloned());
    Ok(pairs("config", &items)?.into_iter().collect())
}

fn pairs(field: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| crate::validate::parse_pair(field, i).map_err(anyhow::Error::new))
        .collect()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = Client::new(cli.socket.clone());
    let out = cli.output;
    match cli.command {
        Command::Daemon(_) | Command::Completions { .. } | Command::NfsFuse(_) => unreachable!("handled in main"),
        Command::Info => {
            let v: Value = c.get("/v1/info").await?;
            print_info(out, &v);
        }
        Command::Node(cmd) => match cmd {
            NodeCmd::Info { name } => show(
                out,
                &c.get::<Value>(&format!("/v1/nodes/{}", enc(name.as_deref().unwrap_or("self"))))
                    .await?,
            ),
            NodeCmd::List => table(
                out,
                &c.get::<Value>("/v1/nodes").await?,
                &[
                    ("NAME", "/name"),
                    ("STATUS", "/status"),
                    ("HOSTNAME", "/hostname"),
                    ("VERSION", "/version"),
                ],
            ),
            NodeCmd::Register { name } => show(out, &c.post::<Value>("/v1/nodes", &json!({ "name": name })).await?),
            NodeCmd::Unregister { name } => c.delete(&format!("/v1/nodes/{}", enc(&name))).await?,
            NodeCmd::Rename { name, new_name } => show(
                out,
                &c.post::<Value>(
                    &format!("/v1/nodes/{}/rename", enc(&name)),
                    &json!({ "new_name": new_name }),
                )
                .await?,
            ),
        },
        Command::Volume(cmd) => volume(&c, out, cmd).await?,
        Command::Backup(cmd) => backups::run(&c, out, cmd).await?,
        Command::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { volume, name } => {
                let body = json!({ "volume": &volume, "name": name });
                show(
                    out,
                    &progress::while_copying(&c, &volume, c.post::<Value>("/v1/snapshots", &body)).await?,
                )
            }
            SnapshotCmd::List { volume } => {
                let q = volume.map(|v| format!("?volume={}", enc(&v))).unwrap_or_default();
                table(
                    out,
                    &c.get::<Value>(&format!("/v1/snapshots{q}")).await?,
                    &[
                        ("NAME", "/name"),
                        ("VOLUME", "/volume"),
                        ("STATE", "/state"),
                        ("SIZE", "/size_bytes"),
                        ("BACKEND", "/backend"),
                    ],
                )
            }
            SnapshotCmd::Inspect { name } => {
                show(out, &c.get::<Value>(&format!("/v1/snapshots/{}", enc(&name))).await?)
            }
            SnapshotCmd::Delete { name } => c.delete(&format!("/v1/snapshots/{}", enc(&name))).await?,
            SnapshotCmd::Restore { name, to, size } => {
                let (path, body) = (
                    format!("/v1/snapshots/{}/restore", enc(&name)),
                    json!({ "volume": &to, "size": size }),
                );
                show(
                    out,
                    &progress::while_copying(&c, &to, c.post::<Value>(&path, &body)).await?,
                )
            }
        },
        Command::Driver(cmd) => match cmd {
            DriverCmd::Install { file, name, upgrade } => {
                let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let mut q = format!("?upgrade={upgrade}");
                if let Some(n) = name {
                    q.push_str(&format!("&name={}", enc(&n)));
                }
                let (status, body) = c
                    .request("POST", &format!("/v1/drivers{q}"), Some((bytes, "application/wasm")))
                    .await?;
                show(out, &client::decode::<Value>(status, &body)?);
            }
            DriverCmd::List => table(
                out,
                &c.get::<Value>("/v1/drivers").await?,
                &[
                    ("NAME", "/name"),
                    ("VERSION", "/info/version"),
                    ("KIND", "/info/kind"),
                    ("SHA256", "/sha256"),
                    ("BUILTIN", "/builtin"),
                ],
            ),
            DriverCmd::Inspect { name } => show(out, &c.get::<Value>(&format!("/v1/drivers/{}", enc(&name))).await?),
            DriverCmd::Remove { name } => c.delete(&format!("/v1/drivers/{}", enc(&name))).await?,
            DriverCmd::Check {
                file,
                config,
                allow_hosts,
                attach,
            } => return driver_check(out, &file, &config, &allow_hosts, attach).await,
        },
        Command::Backend(cmd) => match cmd {
            BackendCmd::Add { name, driver, opts } => {
                let body = json!({
                    "name": name, "driver": driver,
                    "config": backend_config(&opts)?,
                    "allow_hosts": opts.allow_hosts, "memory": opts.memory, "call_timeout": opts.call_timeout,
                });
                show(out, &c.post::<Value>("/v1/backends", &body).await?)
            }
            BackendCmd::List => table(
                out,
                &c.get::<Value>("/v1/backends").await?,
                &[
                    ("NAME", "/name"),
                    ("DRIVER", "/driver"),
                    ("SCOPE", "/scope"),
                    ("ALLOWED HOSTS", "/allow_hosts"),
                ],
            ),
            BackendCmd::Inspect { name } => show(out, &c.get::<Value>(&format!("/v1/backends/{}", enc(&name))).await?),
            BackendCmd::Update { name, opts } => {
                let body = json!({
                    "config": backend_config(&opts)?,
                    "allow_hosts": if opts.allow_hosts.is_empty() { None } else { Some(opts.allow_hosts) },
                    "memory": opts.memory, "call_timeout": opts.call_timeout,
                });
                show(
                    out,
                    &c.call::<Value>("PATCH", &format!("/v1/backends/{}", enc(&name)), Some(&body))
                        .await?,
                )
            }
            BackendCmd::Remove { name } => c.delete(&format!("/v1/backends/{}", enc(&name))).await?,
        },
        Command::Pool(cmd) => {
            let v: Value = match cmd {
                PoolCmd::List => c.get("/v1/pools").await?,
                PoolCmd::Refresh => c.post("/v1/pools/refresh", &json!({})).await?,
            };
            table(
                out,
                &v,
                &[
                    ("BACKEND", "/backend"),
                    ("NODE", "/node"),
                    ("POOL", "/pool/name"),
                    ("TOTAL", "/pool/total"),
                    ("FREE", "/pool/free"),
                    ("PROVISIONED", "/pool/provisioned_bytes"),
                    ("UPDATED", "/updated_at"),
                ],
            );
        }
        Command::Type(cmd) => match cmd {
            TypeCmd::Create {
                name,
                specs,
                description,
            } => {
                let specs: std::collections::BTreeMap<_, _> = split_specs(&specs)?.into_iter().collect();
                show(
                    out,
                    &c.post::<Value>(
                        "/v1/types",
                        &json!({ "name": name, "specs": specs, "description": description }),
                    )
                    .await?,
                )
            }
            TypeCmd::List => table(
                out,
                &c.get::<Value>("/v1/types").await?,
                &[("NAME", "/name"), ("SPECS", "/specs"), ("DESCRIPTION", "/description")],
            ),
            TypeCmd::Inspect { name } => show(out, &c.get::<Value>(&format!("/v1/types/{}", enc(&name))).await?),
            TypeCmd::Delete { name } => c.delete(&format!("/v1/types/{}", enc(&name))).await?,
        },
        Command::Scheduler(SchedulerCmd::Explain {
            size,
            specs,
            volume_type,
            backend,
            driver,
            pool,
            pools,
        }) => {
            let specs = split_specs(&specs)?;
            let explanation = match pools {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading --pools {}", file.display()))?;
                    let size_gb = match size.parse::<f64>() {
                        Ok(gb) => gb,
                        Err(_) => crate::validate::parse_size("size", &size)? as f64 / (1u64 << 30) as f64,
                    };
                    let e = elara_scheduler::explain_offline(
                        &text,
                        size_gb,
                        &specs,
                        &elara_scheduler::Scheduler::default(),
                    )?;
                    serde_json::to_value(e)?
                }
                None => {
                    let size = if size.parse::<f64>().is_ok() {
                        format!("{size}G")
                    } else {
                        size
                    };
                    let specs: std::collections::BTreeMap<_, _> = specs.into_iter().collect();
                    let body = json!({ "size": size, "specs": specs, "type": volume_type, "backend": backend, "driver": driver, "pool": pool });
                    c.post::<Value>("/v1/scheduler/explain", &body).await?
                }
            };
            print_explanation(out, &explanation);
        }
        Command::Op(OpCmd::List) => {
            let cols = [
                ("ID", "/id"),
                ("KIND", "/kind"),
                ("VOLUME", "/volume"),
                ("STEP", "/step"),
                ("DONE", "/params/progress/bytes_done"),
                ("TOTAL", "/params/progress/bytes_total"),
                ("OWNER", "/owner"),
                ("ERROR", "/last_error"),
            ];
            table(out, &c.get::<Value>("/v1/ops").await?, &cols)
        }
    }
    Ok(())
}

async fn volume(c: &Client, out: Output, cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create(a) => {
            let name = a.name.clone();
            let body = json!({
                "name": a.name, "size": a.size, "backend": a.backend, "driver": a.driver, "pool": a.pool,
                "labels": pairs("label", &a.labels)?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "fs": a.fs, "snapshot": a.snapshot, "iops": a.iops, "type": a.volume_type,
                "specs": split_specs(&a.specs)?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            show(
                out,
                &progress::while_copying(c, &name, c.post::<Value>("/v1/volumes", &body)).await?,
            )
        }
        VolumeCmd::List { backend, labels } => {
            let mut q = vec![];
            if let Some(b) = backend {
                q.push(format!("backend={}", enc(&b)));
            }
            if !labels.is_empty() {
                pairs("label", &labels)?;
                q.push(format!("label={}", enc(&labels.join(","))));
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            table(
                out,
                &c.get::<Value>(&format!("/v1/volumes{q}")).await?,
                &[
                    ("NAME", "/name"),
                    ("STATUS", "/status"),
                    ("SIZE", "/size_bytes"),
                    ("BACKEND", "/backend"),
                    ("POOL", "/pool"),
                    ("NODE", "/node"),
                ],
            )
        }
        VolumeCmd::Inspect { name } => {
            let mut v = c.get::<Value>(&format!("/v1/volumes/{}", enc(&name))).await?;
            // What the backend says the volume uses, or why it cannot say (the record still shows).
            v["usage"] = match c.get::<Value>(&format!("/v1/volumes/{}/stats", enc(&name))).await {
                Ok(stats) => stats,
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            show(out, &v)
        }
        VolumeCmd::Delete { name } => c.delete(&format!("/v1/volumes/{}", enc(&name))).await?,
        VolumeCmd::Mount { name, path, holder } => {
            let v: Value = c
                .post(
                    &format!("/v1/volumes/{}/mount", enc(&name)),
                    &json!({ "path": path, "holder": holder }),
                )
                .await?;
            match out {
                Output::Json => show(out, &v),
                Output::Table => println!("{}", v["mountpoint"].as_str().unwrap_or_default()),
            }
        }
        VolumeCmd::Unmount { name, holder } => {
            c.call::<Value>(
                "POST",
                &format!("/v1/volumes/{}/unmount", enc(&name)),
                Some(&json!({ "holder": holder })),
            )
            .await?;
        }
        VolumeCmd::Resize { name, size } => show(
            out,
            &c.post::<Value>(&format!("/v1/volumes/{}/resize", enc(&name)), &json!({ "size": size }))
                .await?,
        ),
        VolumeCmd::Stats { name } => show(
            out,
            &c.get::<Value>(&format!("/v1/volumes/{}/stats", enc(&name))).await?,
        ),
    }
    Ok(())
}

async fn driver_check(
    out: Output,
    file: &std::path::Path,
    config: &[String],
    allow_hosts: &[String],
    attach: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let grants = allow_hosts
        .iter()
        .map(|h| {
            h.parse::<elara_runtime::HostGrant>()
                .map_err(|e| anyhow::anyhow!("allow-host: {h:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache = tempfile::tempdir()?;
    let runtime = elara_runtime::Runtime::new(elara_runtime::RuntimeConfig {
        cache_dir: cache.path().to_path_buf(),
        ..Default::default()
    })?;
    let opts = elara_conformance::CheckOptions {
        config: pairs("config", config)?,
        grants: grants.clone(),
        bring_up: if attach {
            Some(std::sync::Arc::new(bring_up::HostBringUp::new(grants.clone())?))
        } else {
            None
        },
        ..Default::default()
    };
    let report = elara_conformance::run(&runtime, &bytes, opts).await?;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => println!("{report}"),
    }
    if !report.passed() {
        anyhow::bail!("{} does not conform to the elara:driver contract", file.display());
    }
    Ok(())
}

pub(super) fn show(out: Output, v: &Value) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => println!("{}", serde_yaml_like(v, 0)),
    }
}

/// A key as people read it: a connection kind in the contract's words (`image-file`, not
/// `ImageFile`, which is how the store's records spell the variant).
fn display_key(k: &str) -> &str {
    match k {
        "ImageFile" => "image-file",
        "Directory" => "directory",
        "Nfs" => "nfs",
        "Iscsi" => "iscsi",
        "S3" => "s3",
        "Other" => "other",
        k => k,
    }
}

/// A time field (`created_at`, `updated_at`, `since`, ...) holding seconds since the epoch, as
/// RFC 3339; anything else as is.
fn display_value(k: &str, v: &Value) -> String {
    match k.ends_with("_at") || k == "since" {
        true => time_text(v),
        false => scalar(v),
    }
}

/// Seconds since the epoch as RFC 3339 (UTC); anything else as is.
fn time_text(v: &Value) -> String {
    if let Some(secs) = v.as_i64()
        && let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs)
        && let Ok(text) = t.format(&time::format_description::well_known::Rfc3339)
    {
        return text;
    }
    scalar(v)
}

/// A readable, indented rendering of a JSON value for `inspect`-style output.
fn serde_yaml_like(v: &Value, indent: usize) -> String {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, val)| (display_key(k), k, val))
            .map(|(k, raw, val)| match val {
                Value::Object(o) if !o.is_empty() => {
                    format!("{pad}{k}:\n{}", serde_yaml_like(val, indent + 1))
                }
                Value::Array(a) if !a.is_empty() && a.iter().any(|x| x.is_object()) => {
                    format!("{pad}{k}:\n{}", serde_yaml_like(val, indent + 1))
                }
                _ => format!("{pad}{k}: {}", display_value(raw, val)),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(a) => a
            .iter()
            .map(|x| format!("{pad}-\n{}", serde_yaml_like(x, indent + 1)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{pad}{}", scalar(other)),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// Print a list as aligned columns (or JSON), each column a JSON pointer into the row.
pub(super) fn table(out: Output, v: &Value, cols: &[(&str, &str)]) {
    indented_table(out, v, cols, "")
}

/// Columns whose values are byte counts, printed in binary units (`1.5 GiB`).
const SIZE_COLUMNS: &[&str] = &["SIZE", "TOTAL", "FREE", "PROVISIONED", "USED", "ALLOCATED", "DONE"];

/// Columns whose values are times (seconds since the epoch), printed as RFC 3339.
const TIME_COLUMNS: &[&str] = &["CREATED", "UPDATED", "SINCE", "INSTALLED"];

fn indented_table(out: Output, v: &Value, cols: &[(&str, &str)], indent: &str) {
    if out == Output::Json {
        return show(out, v);
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|row| {
                    cols.iter()
                        .map(|(h, p)| match (TIME_COLUMNS.contains(h), row.pointer(p)) {
                            (true, Some(t)) => time_text(t),
                            _ => cell(row.pointer(p), SIZE_COLUMNS.contains(h)),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| rows.iter().map(|r| r[i].len()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let l = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        format!("{indent}{}", l.trim_end())
    };
    println!("{}", line(cols.iter().map(|(h, _)| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
}

fn cell(v: Option<&Value>, bytes: bool) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        // A capacity variant: {"Bytes": n}, "Infinite", "Unknown".
        Some(Value::Object(o)) if o.len() == 1 => {
            let (k, val) = o.iter().next().expect("one entry");
            if bytes && k == "Bytes" {
                human_bytes(val)
            } else {
                format!("{k}:{}", scalar(val))
            }
        }
        Some(Value::String(s)) if bytes => s.to_lowercase(),
        Some(v) if bytes => human_bytes(v),
        Some(v) => scalar(v),
    }
}

fn human_bytes(v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return scalar(v);
    };
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if x.fract() == 0.0 {
        format!("{x:.0} {}", UNITS[unit])
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

fn print_info(out: Output, v: &Value) {
    if out == Output::Json {
        return show(out, v);
    }
    println!(
        "Version:     {} (driver contract elara:driver@{})",
        scalar(&v["version"]),
        scalar(&v["wit_version"])
    );
    println!("Node:        {}", scalar(&v["node"]));
    println!(
        "Store:       {} ({})",
        scalar(&v["store"]),
        scalar(&v["store_location"])
    );
    println!("Data dir:    {}", scalar(&v["data_dir"]));
    println!(
        "Volumes:     {}   Snapshots: {}",
        scalar(&v["volumes"]),
        scalar(&v["snapshots"])
    );
    println!("Drivers:");
    indented_table(
        out,
        &v["drivers"],
        &[
            ("NAME", "/name"),
            ("VERSION", "/info/version"),
            ("KIND", "/info/kind"),
            ("SHA256", "/sha256"),
        ],
        "  ",
    );
    println!("Backends:");
    indented_table(
        out,
        &v["backends"],
        &[("NAME", "/name"), ("DRIVER", "/driver"), ("SCOPE", "/scope")],
        "  ",
    );
    println!("Pools:");
    indented_table(
        out,
        &v["pools"],
        &[
            ("BACKEND", "/backend"),
            ("NODE", "/node"),
            ("POOL", "/pool/name"),
            ("TOTAL", "/pool/total"),
            ("FREE", "/pool/free"),
        ],
        "  ",
    );
    println!("Data paths:");
    indented_table(
        out,
        &v["data_paths"],
        &[
            ("PROTOCOL", "/protocol"),
            ("MODE", "/mode"),
            ("AVAILABLE", "/available"),
            ("IN USE", "/selected"),
            ("DETAIL", "/detail"),
        ],
        "  ",
    );
}

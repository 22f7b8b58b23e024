//! `elara backup ...`: targets, create, list, inspect, delete, restore, verify. Long jobs are
//! polled over REST and drawn as an `indicatif` progress bar (phase, bytes, rate, ETA).

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::cli::client::{Client, enc};

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Backup targets: a local directory or an S3 bucket/prefix.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Back up a volume (through a temporary snapshot); incremental against its last backup.
    Create {
        volume: String,
        #[arg(long)]
        target: String,
        /// Start it and print the job id instead of waiting.
        #[arg(long)]
        detach: bool,
    },
    List {
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        target: Option<String>,
    },
    Inspect {
        id: String,
    },
    /// Delete a backup; blocks other backups use stay.
    Delete {
        id: String,
    },
    /// Restore into a new volume, checking every block (or chunk) and the whole-volume (or tree) digest.
    /// A file backup restores into a volume of any backend this node can mount.
    Restore {
        id: String,
        #[arg(long = "to")]
        to: String,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Check every block (or chunk) of a backup and its digest, writing nothing.
    Verify {
        id: String,
    },
    /// A job's progress (backup, restore, verify).
    Job {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TargetCmd {
    /// `elara backup target add NAME /dir` or `NAME s3://bucket/prefix --endpoint ... --access-key ... --secret-key ...`
    Add {
        name: String,
        url: String,
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long, env = "ELARA_BACKUP_ACCESS_KEY")]
        access_key: Option<String>,
        #[arg(long, env = "ELARA_BACKUP_SECRET_KEY", hide_env_values = true)]
        secret_key: Option<String>,
    },
    List,
    Inspect {
        name: String,
    },
    Remove {
        name: String,
    },
}

// Output as every other command prints it: `inspect`-style records, tables with sizes in
// binary units and times as RFC 3339.
use super::{show, table};

/// Poll a job until it ends, drawing a progress bar on a terminal; returns the final job.
async fn follow(c: &Client, job: Value) -> anyhow::Result<Value> {
    use crate::cli::progress;
    let id = job["id"]
        .as_str()
        .context("the daemon's answer has no job id")?
        .to_string();
    let bar = progress::bar();
    let mut job = job;
    loop {
        progress::draw(&bar, &job["progress"]);
        if job["state"] != "running" {
            break;
        }
        tokio::time::sleep(progress::REFRESH).await;
        job = c.get(&format!("/v1/backup-jobs/{}", enc(&id))).await?;
    }
    bar.finish_and_clear();
    if let Some(e) = job["error"].as_str() {
        bail!("{} {id} failed: {e}", job["kind"].as_str().unwrap_or("job"));
    }
    Ok(job)
}

pub async fn run(c: &Client, out: Output, cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Target(t) => match t {
            TargetCmd::Add {
                name,
                url,
                endpoint,
                region,
                access_key,
                secret_key,
            } => {
                let body = json!({ "name": name, "url": url, "endpoint": endpoint, "region": region, "access_key": access_key, "secret_key": secret_key });
                show(out, &c.post::<Value>("/v1/backup-targets", &body).await?)
            }
            TargetCmd::List => table(
                out,
                &c.get::<Value>("/v1/backup-targets").await?,
                &[
                    ("NAME", "/name"),
                    ("KIND", "/location/kind"),
                    ("PATH", "/location/path"),
                    ("BUCKET", "/location/bucket"),
                    ("PREFIX", "/location/prefix"),
                    ("ENDPOINT", "/location/endpoint"),
                ],
            ),
            TargetCmd::Inspect { name } => show(
                out,
                &c.get::<Value>(&format!("/v1/backup-targets/{}", enc(&name))).await?,
            ),
            TargetCmd::Remove { name } => c.delete(&format!("/v1/backup-targets/{}", enc(&name))).await?,
        },
        BackupCmd::Create { volume, target, detach } => {
            let job: Value = c
                .post("/v1/backups", &json!({ "volume": volume, "target": target }))
                .await?;
            if detach {
                show(out, &job);
                return Ok(());
            }
            let job = follow(c, job).await?;
            show(out, &job["result"]);
        }
        BackupCmd::List { volume, target } => {
            let mut q = vec![];
            if let Some(v) = volume {
                q.push(format!("volume={}", enc(&v)));
            }
            if let Some(t) = target {
                q.push(format!("target={}", enc(&t)));
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            table(
                out,
                &c.get::<Value>(&format!("/v1/backups{q}")).await?,
                &[
                    ("ID", "/id"),
                    ("VOLUME", "/volume"),
                    ("TARGET", "/target"),
                    ("SIZE", "/size_bytes"),
                    ("BLOCKS", "/data_blocks"),
                    ("UPLOADED", "/uploaded_blocks"),
                    ("PARENT", "/parent"),
                    ("CREATED", "/created_at"),
                ],
            )
        }
        BackupCmd::Inspect { id } => show(out, &c.get::<Value>(&format!("/v1/backups/{}", enc(&id))).await?),
        BackupCmd::Delete { id } => c.delete(&format!("/v1/backups/{}", enc(&id))).await?,
        BackupCmd::Restore { id, to, backend, pool } => {
            let job: Value = c
                .post(
                    &format!("/v1/backups/{}/restore", enc(&id)),
                    &json!({ "volume": to, "backend": backend, "pool": pool }),
                )
                .await?;
            let job = follow(c, job).await?;
            show(out, &job["result"]);
        }
        BackupCmd::Verify { id } => {
            let job: Value = c.post(&format!("/v1/backups/{}/verify", enc(&id)), &json!({})).await?;
            let job = follow(c, job).await?;
            let report = &job["result"];
            show(out, report);
            if report["ok"] != true {
                let bad: Vec<String> = report["bad_blocks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|b| {
                                let (id, reason) = (b["id"].as_str().unwrap_or(""), b["reason"].as_str().unwrap_or(""));
                                match b["path"].as_str() {
                                    Some(path) => format!("chunk {id} of {path}: {reason}"),
                                    None => format!("block {} ({id}): {reason}", b["index"]),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let digest = if report["digest_ok"] == false {
                    "; the whole-volume (or whole-tree) digest does not match"
                } else {
                    ""
                };
                bail!(
                    "backup {id} is damaged: {}{digest}",
                    if bad.is_empty() {
                        "-".to_string()
                    } else {
                        bad.join("; ")
                    }
                );
            }
        }
        BackupCmd::Job { id } => show(out, &c.get::<Value>(&format!("/v1/backup-jobs/{}", enc(&id))).await?),
    }
    Ok(())
}

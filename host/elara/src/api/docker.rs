//! Docker's legacy volume plugin protocol on `PLUGIN_DIR/elara.sock`.
//!
//! * `Plugin.Activate` answers at once, even before the store is open; volume calls that arrive
//!   before the daemon is ready wait for it (bounded by [`READY_WAIT`]) instead of failing, so a
//!   call dockerd retries across an Elara restart goes through.
//! * `Get`, `List`, `Path` and `Capabilities` answer from the store alone, never waiting on a
//!   driver or a backend: dockerd gives up on a slow plugin and then fails every command that
//!   touches the volume. `Capabilities` comes from the configuration (`global` on etcd, one
//!   volume namespace for the cluster; `local` on the embedded store), so it is right even while
//!   the store is still connecting.
//! * Every handler is idempotent: dockerd retries a call whose connection dropped. A repeated
//!   `Create` of an existing name succeeds, `Remove` of a missing volume succeeds, and mounts are
//!   held per Docker mount `ID` (holder `docker:<ID>`) in the store, so the attachment is
//!   reference-counted across containers and a repeated `Mount` or `Unmount` changes nothing.
//! * Reclaiming lost `Unmount`s (Elara was down when a container went away, and dockerd gave up
//!   retrying): a container's mount of a volume lives in the container's mount namespace, so a
//!   volume that no process in another mount namespace has mounted is used by no container.
//!   dockerd sends `Remove` only when none of its containers references the volume, so `Remove`
//!   first drops the `docker:` holders of such a volume on this node. A background sweep does the
//!   same for holders older than a grace period (a container starts right after its Mount), so
//!   loop devices and mounts come back without a `docker volume rm`. Grace and period default to
//!   [`RECLAIM_GRACE_SECS`] and 30 s; `ELARA_DOCKER_RECLAIM_SECS=N` sets both to N seconds, `0`
//!   turns the sweep off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use elara_store::StoreExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::attach::mountinfo;
use crate::error::{ApiError, ApiResult};
use crate::model::{AttachmentRecord, AttachmentState, VolumeRecord, VolumeState, keys, now};
use crate::ops::Shared;
use crate::ops::volumes::CreateVolume;

pub const PLUGIN_NAME: &str = "elara";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The options `docker volume create -d elara -o KEY=VALUE` accepts.
pub const OPTIONS: &[&str] = &[
    "size",
    "backend",
    "driver-name",
    "pool",
    "type",
    "spec",
    "fs",
    "snapshot",
    "iops",
    "labels",
    "label.<key>",
];

/// How long a volume call waits for a starting daemon before answering with an error.
pub const READY_WAIT: Duration = Duration::from_secs(20);

/// A `docker:` holder must be at least this old before the sweep may reclaim it (a container is
/// started right after its volumes are mounted; this covers that gap with a wide margin).
pub const RECLAIM_GRACE_SECS: i64 = 60;

/// How often the reclaim sweep runs.
const RECLAIM_EVERY: Duration = Duration::from_secs(30);

/// How long a retried Create waits for the earlier attempt still creating the volume.
const RETRY_WAIT: Duration = Duration::from_secs(120);

/// Test and tuning knob: grace and period of the reclaim sweep in seconds, `0` for off.
pub const RECLAIM_ENV: &str = "ELARA_DOCKER_RECLAIM_SECS";

/// Holders that Docker mounts are recorded under.
const HOLDER_PREFIX: &str = "docker:";

pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    ready: Ready,
    state: PluginState,
}

/// What the handlers share: the daemon once it is ready, and the scope fixed by the configuration.
#[derive(Clone)]
pub struct PluginState {
    elara: watch::Receiver<Option<Shared>>,
    scope: &'static str,
}

/// Given the daemon once it is ready (`send_replace(Some(..))`); volume calls wait for it.
pub type Ready = watch::Sender<Option<Shared>>;

/// Docker's volume scope for a store URL: `global` on etcd (every node sees every volume).
pub fn scope_of(store_url: &str) -> &'static str {
    if elara_store::StoreUrl::parse(store_url).is_ok_and(|url| url.is_cluster()) {
        "global"
    } else {
        "local"
    }
}

impl Listener {
    /// Bind `DIR/elara.sock` (replacing a stale socket, refusing a live one).
    pub async fn bind(dir: &Path, store_url: &str) -> anyhow::Result<Listener> {
        let path = dir.join(format!("{PLUGIN_NAME}.sock"));
        let listener = super::bind_unix(&path).context("the Docker plugin socket")?;
        let (ready, elara) = watch::channel(None);
        Ok(Listener {
            listener,
            path,
            ready,
            state: PluginState {
                elara,
                scope: scope_of(store_url),
            },
        })
    }

    /// Serve at once; volume calls wait until the daemon is sent on the returned channel. Also
    /// runs the reclaim sweep once the daemon is ready.
    pub fn start(self, stop: watch::Receiver<bool>) -> (Ready, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let ready = self.ready;
        let app = router(self.state.clone());
        let path = self.path.clone();
        tokio::spawn(reclaim_loop(self.state.clone(), stop.clone()));
        let mut stop = stop;
        let task = tokio::spawn(async move {
            tracing::info!(socket = %path.display(), "Docker volume plugin listening");
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("Docker plugin socket")?;
            let _ = std::fs::remove_file(&path);
            Ok(())
        });
        (ready, task)
    }
}

fn router(state: PluginState) -> Router {
    Router::new()
        .route(
            "/Plugin.Activate",
            post(|| async { reply(json!({ "Implements": ["VolumeDriver"] })) }),
        )
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .with_state(state)
}

fn reply(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

/// Docker shows `Err` as `Error response from daemon: <verb> <name>: <Err>`.
fn err(e: impl std::fmt::Display) -> Response {
    reply(json!({ "Err": e.to_string() }))
}

fn ok() -> Response {
    reply(json!({ "Err": "" }))
}

/// The daemon, waiting (bounded) while it starts.
async fn ready(state: &PluginState) -> Result<Shared, Response> {
    match tokio::time::timeout(READY_WAIT, state.daemon()).await {
        Ok(Some(s)) => Ok(s),
        _ => Err(err(format!(
            "elara is still starting (its metadata store is not open after {READY_WAIT:?}); try again"
        ))),
    }
}

impl PluginState {
    /// The daemon, once it is ready; `None` if it stopped before getting there.
    async fn daemon(&self) -> Option<Shared> {
        let mut rx = self.elara.clone();
        let ready = rx.wait_for(Option::is_some).await.ok()?;
        ready.clone()
    }
}

/// A request body as dockerd sends it. `Opts` may be `null`; unknown fields are ignored.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase")]
struct Req {
    #[serde(default)]
    name: String,
    #[serde(default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID", default)]
    id: String,
}

fn parse(body: &Bytes) -> Result<Req, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed request from dockerd: {e}"))
}

/// The daemon and the parsed request, or the error reply.
async fn begin(state: &PluginState, body: &Bytes, call: &str) -> Result<(Shared, Req), Response> {
    let req = parse(body).map_err(err)?;
    tracing::debug!(volume = %req.name, id = %req.id, "Docker {call}");
    Ok((ready(state).await?, req))
}

fn holder(id: &str) -> String {
    // Docker has sent a mount ID since 1.12; an older engine's mounts share one holder.
    if id.is_empty() {
        format!("{HOLDER_PREFIX}anonymous")
    } else {
        format!("{HOLDER_PREFIX}{id}")
    }
}

async fn capabilities(State(state): State<PluginState>) -> Response {
    reply(json!({ "Capabilities": { "Scope": state.scope } }))
}

/// Turn `-o` options into a create request; unknown or malformed options are refused by name.
pub fn create_request(name: &str, opts: &BTreeMap<String, String>) -> ApiResult<CreateVolume> {
    let mut req = CreateVolume {
        name: name.to_string(),
        ..Default::default()
    };
    for (k, v) in opts {
        match k.as_str() {
            "size" => req.size = Some(v.clone()),
            "backend" => req.backend = Some(v.clone()),
            "driver-name" | "driver" => req.driver = Some(v.clone()),
            "pool" => req.pool = Some(v.clone()),
            "type" => req.volume_type = Some(v.clone()),
            // `-o spec='iops>=1000'`; several specs separated by `;`.
            "spec" => {
                for one in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    let (sk, sv) =
                        elara_scheduler::parse_spec_arg(one).map_err(|e| ApiError::invalid("spec", e.to_string()))?;
                    req.specs.insert(sk, sv);
                }
            }
            "fs" => req.fs = Some(v.clone()),
            "snapshot" => req.snapshot = Some(v.clone()),
            "iops" => {
                req.iops = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| ApiError::invalid("iops", format!("{v:?} is not a whole number")))?,
                )
            }
            "labels" => {
                for pair in v.split(',').filter(|p| !p.is_empty()) {
                    let (lk, lv) = crate::validate::parse_pair("labels", pair)?;
                    req.labels.insert(lk, lv);
                }
            }
            other if other.starts_with("label.") && other.len() > 6 => {
                req.labels.insert(other[6..].to_string(), v.clone());
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown option {other:?}; elara accepts {}", OPTIONS.join(", ")),
                ));
            }
        }
    }
    if let Some(s) = &req.size {
        crate::validate::parse_size("size", s)?;
    }
    Ok(req)
}

async fn create(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Create").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let opts = req.opts.unwrap_or_default();
    let create = match create_request(&req.name, &opts) {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    // dockerd retries a Create whose answer it lost: an earlier attempt's volume answers it,
    // once that attempt has settled (gone again: it failed and was undone, so create anew).
    match settled(&s, &req.name).await {
        Ok(Some(v)) => return earlier_attempt(&v),
        Ok(None) => {}
        Err(e) => return err(e),
    }
    match s.create_volume(create).await {
        Ok(_) => ok(),
        // An attempt running at the same time made the record first: its outcome is ours.
        Err(e) if e.status == 409 && e.field.as_deref() == Some("name") => match settled(&s, &req.name).await {
            Ok(Some(v)) => earlier_attempt(&v),
            Ok(None) => err(e),
            Err(e) => err(e),
        },
        Err(e) => err(e),
    }
}

/// The answer to a Create of a volume an earlier attempt made (see [`settled`]).
fn earlier_attempt(v: &VolumeRecord) -> Response {
    match v.state {
        VolumeState::Available => ok(),
        VolumeState::Error => err(format!(
            "volume {:?} failed: {}",
            v.name,
            v.error.as_deref().unwrap_or("see the daemon's log")
        )),
        VolumeState::Deleting => err(format!(
            "volume {:?} is being deleted; try again when it is gone",
            v.name
        )),
        VolumeState::Creating => err(format!(
            "volume {:?} is still being created by an earlier request after {RETRY_WAIT:?}; try again",
            v.name
        )),
    }
}

/// The volume `name` once no create of it is in flight (waiting at most [`RETRY_WAIT`]), or
/// `None` if there is none.
async fn settled(s: &Shared, name: &str) -> ApiResult<Option<VolumeRecord>> {
    let deadline = tokio::time::Instant::now() + RETRY_WAIT;
    loop {
        let v = s.get::<VolumeRecord>(&keys::volume(name)).await?.map(|r| r.value);
        match v {
            Some(v) if v.state == VolumeState::Creating && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other),
        }
    }
}

async fn remove(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Remove").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    // dockerd removes only a volume none of its containers references: Docker holders left on
    // this node lost their Unmount, unless a container (of another engine) still has it mounted.
    if let Err(e) = reclaim_volume(&s, &req.name, None).await {
        return err(e);
    }
    match s.delete_volume(&req.name).await {
        Ok(()) => ok(),
        Err(e) if e.status == 404 => ok(),
        Err(e) => err(e),
    }
}

async fn mount(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Mount").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    match s.mount_volume(&req.name, &holder(&req.id), None).await {
        Ok(mp) => reply(json!({ "Mountpoint": mp, "Err": "" })),
        Err(e) => err(e),
    }
}

async fn unmount(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Unmount").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    match s.unmount_volume(&req.name, &holder(&req.id)).await {
        Ok(()) => ok(),
        Err(e) if e.status == 404 => ok(),
        Err(e) => err(e),
    }
}

/// This node's attachment of `name`, from the store.
async fn attachment(s: &Shared, name: &str) -> ApiResult<Option<AttachmentRecord>> {
    Ok(s.store
        .get_json::<AttachmentRecord>(&keys::attachment(name, s.node()))
        .await?
        .map(|r| r.value))
}

/// The mountpoint of an attachment, or "" when it is not (yet) mounted.
fn mountpoint(att: Option<&AttachmentRecord>) -> String {
    att.and_then(|a| a.host.as_ref())
        .map(|h| h.mountpoint.display().to_string())
        .unwrap_or_default()
}

fn created_at(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

async fn path(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Path").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    match attachment(&s, &req.name).await {
        Ok(att) => reply(json!({ "Mountpoint": mountpoint(att.as_ref()), "Err": "" })),
        Err(e) => err(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerVolume {
    name: String,
    mountpoint: String,
    created_at: String,
    status: BTreeMap<String, Value>,
}

async fn get(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match begin(&state, &body, "Get").await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let rec = match s.store.get_json::<VolumeRecord>(&keys::volume(&req.name)).await {
        Ok(Some(r)) => r.value,
        Ok(None) => return err(format!("volume {:?} does not exist", req.name)),
        Err(e) => return err(ApiError::from(e)),
    };
    let att = match attachment(&s, &req.name).await {
        Ok(a) => a,
        Err(e) => return err(e),
    };
    let mut status: BTreeMap<String, Value> = [
        ("id".to_string(), json!(rec.id)),
        ("backend".to_string(), json!(rec.backend)),
        ("pool".to_string(), json!(rec.pool)),
        ("size".to_string(), json!(rec.size_bytes)),
        ("fs".to_string(), json!(rec.fs)),
        ("state".to_string(), json!(rec.state)),
        ("labels".to_string(), json!(rec.labels)),
    ]
    .into();
    for (k, v) in [
        ("node", json!(rec.node)),
        ("type", json!(rec.volume_type)),
        ("snapshot", json!(rec.source_snapshot)),
        ("error", json!(rec.error)),
    ] {
        if !v.is_null() {
            status.insert(k.to_string(), v);
        }
    }
    if let Some(q) = &rec.qos
        && let Some(iops) = q.iops
    {
        status.insert("iops".into(), json!(iops));
    }
    if let Some(a) = &att {
        status.insert("mounts".into(), json!(a.holders.len()));
    }
    let vol = DockerVolume {
        name: rec.name,
        mountpoint: mountpoint(att.as_ref()),
        created_at: created_at(rec.created_at),
        status,
    };
    reply(json!({ "Volume": vol, "Err": "" }))
}

async fn list(State(state): State<PluginState>, body: Bytes) -> Response {
    let s = match begin(&state, &body, "List").await {
        Ok((s, _)) => s,
        Err(e) => return e,
    };
    let (vols, atts) = match (
        s.listed_volumes().await,
        s.store.list_json::<AttachmentRecord>(&keys::all_attachments()).await,
    ) {
        (Ok(v), Ok(a)) => (v, a),
        (Err(e), _) => return err(e),
        (_, Err(e)) => return err(ApiError::from(e)),
    };
    let here: BTreeMap<&str, &AttachmentRecord> = atts
        .iter()
        .filter(|a| a.value.node == s.node())
        .map(|a| (a.value.volume.as_str(), &a.value))
        .collect();
    let volumes: Vec<Value> = vols
        .iter()
        .map(|v| {
            json!({
                "Name": v.name,
                "Mountpoint": mountpoint(here.get(v.name.as_str()).copied()),
                "CreatedAt": created_at(v.created_at),
            })
        })
        .collect();
    reply(json!({ "Volumes": volumes, "Err": "" }))
}

/// Drop the `docker:` holders of `name` on this node that were mounted at or before `cutoff`
/// (all of them with `None`), if no container has the volume mounted; the last holder to go
/// unmounts and detaches. Returns how many holders were dropped.
async fn reclaim_volume(s: &Shared, name: &str, cutoff: Option<i64>) -> ApiResult<usize> {
    let Some(att) = attachment(s, name).await? else {
        return Ok(0);
    };
    // A failed attachment (its helper died) is reclaimed like a working one.
    if !matches!(att.state, AttachmentState::Attached | AttachmentState::Failed) {
        return Ok(0);
    }
    let stale: Vec<String> = att
        .holders
        .iter()
        .filter(|(h, v)| h.starts_with(HOLDER_PREFIX) && cutoff.is_none_or(|c| v.since <= c))
        .map(|(h, _)| h.clone())
        .collect();
    let Some(host) = &att.host else { return Ok(0) };
    if stale.is_empty() {
        return Ok(0);
    }
    let mountpoint = host.mountpoint.clone();
    let in_use = tokio::task::spawn_blocking(move || mountinfo::used_by_another_namespace(&mountpoint))
        .await
        .map_err(|e| ApiError::internal(format!("reclaim scan: {e}")))?
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot tell whether a container still uses volume {name:?}: {e}"
            ))
        })?;
    if in_use {
        return Ok(0);
    }
    for h in &stale {
        tracing::info!(volume = %name, holder = %h, "reclaiming a Docker mount whose container is gone");
        match s.unmount_volume(name, h).await {
            Ok(()) => {}
            Err(e) if e.status == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(stale.len())
}

/// The sweep's grace (and period), from [`RECLAIM_ENV`]; `None` when turned off.
fn reclaim_grace() -> Option<(i64, Duration)> {
    match std::env::var(RECLAIM_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(0) => None,
        Some(n) => Some((n as i64, Duration::from_secs(n))),
        None => Some((RECLAIM_GRACE_SECS, RECLAIM_EVERY)),
    }
}

async fn reclaim_loop(state: PluginState, mut stop: watch::Receiver<bool>) {
    let Some((grace, every)) = reclaim_grace() else {
        tracing::info!("Docker mount reclaim sweep is off ({RECLAIM_ENV}=0)");
        return;
    };
    let s = tokio::select! {
        s = state.daemon() => match s {
            Some(s) => s,
            None => return,
        },
        _ = stop.changed() => return,
    };
    loop {
        match reclaim_once(&s, grace).await {
            Ok(n) => tracing::debug!(reclaimed = n, "Docker reclaim sweep done"),
            Err(e) => tracing::warn!("Docker mount reclaim sweep failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How long the sweep gives one volume before it reports it stuck and moves on.
const RECLAIM_VOLUME_LIMIT: Duration = Duration::from_secs(180);
/// Volumes the sweep takes down at once.
const RECLAIM_PARALLEL: usize = 8;

/// One sweep over this node's attachments: Docker holders older than `grace` seconds of volumes
/// no container has mounted are dropped. Returns how many. Volumes are taken down side by side,
/// each in a task of its own that the sweep waits on for [`RECLAIM_VOLUME_LIMIT`]: one whose
/// unmount is stuck (a dead server, a busy mount) is reported, goes on by itself (never cut off
/// half-way; its volume stays locked, so the next sweep leaves it alone), and holds up none of
/// the others.
pub async fn reclaim_once(s: &Shared, grace: i64) -> ApiResult<usize> {
    use futures::StreamExt;
    let atts = s.store.list_json::<AttachmentRecord>(&keys::all_attachments()).await?;
    let cutoff = now() - grace;
    let due: Vec<String> = atts
        .into_iter()
        .map(|r| r.value)
        .filter(|a| {
            a.node == s.node()
                && a.holders
                    .iter()
                    .any(|(h, v)| h.starts_with(HOLDER_PREFIX) && v.since <= cutoff)
        })
        .map(|a| a.volume)
        .collect();
    let results = futures::stream::iter(due)
        .map(|volume| async move {
            let (s, name) = (s.clone(), volume.clone());
            let task = tokio::spawn(async move { reclaim_volume(&s, &name, Some(cutoff)).await });
            let res = tokio::time::timeout(RECLAIM_VOLUME_LIMIT, task).await;
            (volume, res)
        })
        .buffer_unordered(RECLAIM_PARALLEL)
        .collect::<Vec<_>>()
        .await;
    let mut reclaimed = 0;
    for (volume, res) in results {
        match res {
            Ok(Ok(Ok(n))) => reclaimed += n,
            Ok(Ok(Err(e))) => tracing::warn!(volume = %volume, "reclaiming its Docker mounts: {e}"),
            Ok(Err(e)) => {
                tracing::error!(volume = %volume, "reclaiming its Docker mounts: task failed: {e}")
            }
            Err(_) => {
                tracing::warn!(volume = %volume, "reclaiming its Docker mounts is stuck after {RECLAIM_VOLUME_LIMIT:?}; the next sweep tries again")
            }
        }
    }
    Ok(reclaimed)
}

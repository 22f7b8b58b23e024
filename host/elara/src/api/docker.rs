//! Docker's legacy volume plugin protocol on `PLUGIN_DIR/elara.sock`.
//!
//! `Plugin.Activate` answers at once, even before the store is open. `Get`, `List`, `Path` and
//! `Capabilities` answer from the store alone, never waiting on a driver. Every handler is
//! idempotent: dockerd retries a call whose connection dropped. Mounts are held per Docker mount
//! `ID` (holder `docker:<ID>`), so the attachment is reference-counted across containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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

use crate::error::{ApiError, ApiResult};
use crate::model::{AttachmentRecord, VolumeRecord, keys};
use crate::ops::Shared;
use crate::ops::volumes::CreateVolume;

pub const PLUGIN_NAME: &str = "elara";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The options `docker volume create -d elara -o KEY=VALUE` accepts.
pub const OPTIONS: &[&str] = &["size", "backend", "driver-name", "pool", "type", "fs", "snapshot", "iops", "labels", "label.<key>", "spec"];

pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    state: Arc<OnceLock<Shared>>,
}

type PluginState = Arc<OnceLock<Shared>>;

impl Listener {
    pub async fn bind(dir: &Path) -> anyhow::Result<Listener> {
        let path = dir.join(format!("{PLUGIN_NAME}.sock"));
        let listener = crate::server::bind_unix(&path).context("the Docker plugin socket")?;
        Ok(Listener { listener, path, state: Arc::new(OnceLock::new()) })
    }

    /// Serve at once; volume calls wait for `ready` to be set.
    pub fn start(self, mut stop: watch::Receiver<bool>) -> (PluginState, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let state = self.state.clone();
        let app = router(self.state.clone());
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("Docker plugin socket")?;
            let _ = std::fs::remove_file(&path);
            Ok(())
        });
        (state, task)
    }
}

fn router(state: PluginState) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(|| async { reply(json!({ "Implements": ["VolumeDriver"] })) }))
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

/// Docker shows `Err` as `Error response from daemon: ...`.
fn err(e: impl std::fmt::Display) -> Response {
    reply(json!({ "Err": e.to_string() }))
}

fn ready(state: &PluginState) -> Result<Shared, Response> {
    state.get().cloned().ok_or_else(|| err("elara is starting: its metadata store is not open yet; try again"))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Req {
    #[serde(default)]
    name: String,
    #[serde(default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID", default)]
    id: String,
}

fn parse(body: &Bytes) -> Result<Req, Response> {
    if body.is_empty() {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| err(format!("malformed request from dockerd: {e}")))
}

async fn capabilities(State(state): State<PluginState>) -> Response {
    // On etcd every node sees the same volumes: Docker's `global` scope.
    let scope = match state.get() {
        Some(s) if s.store.kind() == "etcd" => "global",
        _ => "local",
    };
    reply(json!({ "Capabilities": { "Scope": scope } }))
}

/// Turn `-o` options into a create request; unknown or malformed options are refused by name.
pub fn create_request(name: &str, opts: &BTreeMap<String, String>) -> ApiResult<CreateVolume> {
    let mut req = CreateVolume { name: name.to_string(), ..Default::default() };
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
                    let (sk, sv) = elara_scheduler::parse_spec_arg(one).map_err(|e| ApiError::invalid("spec", e.to_string()))?;
                    req.specs.insert(sk, sv);
                }
            }
            "fs" => req.fs = Some(v.clone()),
            "snapshot" => req.snapshot = Some(v.clone()),
            "iops" => {
                req.iops = Some(v.parse().map_err(|_| ApiError::invalid("iops", format!("{v:?} is not a whole number")))?)
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
                return Err(ApiError::invalid(other, format!("unknown option {other:?}; elara accepts {}", OPTIONS.join(", "))));
            }
        }
    }
    if let Some(s) = &req.size {
        crate::validate::parse_size("size", s)?;
    }
    Ok(req)
}

async fn create(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let opts = req.opts.unwrap_or_default();
    let create = match create_request(&req.name, &opts) {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    // dockerd retries: an existing volume of that name is this create's earlier success.
    match s.store.get(&keys::volume(&req.name)).await {
        Ok(Some(_)) => return reply(json!({ "Err": "" })),
        Ok(None) => {}
        Err(e) => return err(ApiError::from(e)),
    }
    match s.create_volume(create).await {
        Ok(_) => reply(json!({ "Err": "" })),
        Err(e) if e.status == 409 && e.field.as_deref() == Some("name") => reply(json!({ "Err": "" })),
        Err(e) => err(e),
    }
}

async fn remove(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match s.delete_volume(&req.name).await {
        Ok(()) => reply(json!({ "Err": "" })),
        Err(e) if e.status == 404 => reply(json!({ "Err": "" })),
        Err(e) => err(e),
    }
}

async fn mount(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if req.id.is_empty() {
        return err("Mount without an ID");
    }
    match s.mount_volume(&req.name, &format!("docker:{}", req.id), None).await {
        Ok(mp) => reply(json!({ "Mountpoint": mp, "Err": "" })),
        Err(e) => err(e),
    }
}

async fn unmount(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match s.unmount_volume(&req.name, &format!("docker:{}", req.id)).await {
        Ok(()) => reply(json!({ "Err": "" })),
        Err(e) if e.status == 404 => reply(json!({ "Err": "" })),
        Err(e) => err(e),
    }
}

/// The mountpoint on this node from the store, or "" when not mounted here.
async fn mountpoint_of(s: &Shared, name: &str) -> Result<String, ApiError> {
    let att = s.store.get_json::<AttachmentRecord>(&keys::attachment(name, s.node())).await?;
    Ok(att.and_then(|a| a.value.host).map(|h| h.mountpoint.display().to_string()).unwrap_or_default())
}

async fn path(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match mountpoint_of(&s, &req.name).await {
        Ok(mp) => reply(json!({ "Mountpoint": mp, "Err": "" })),
        Err(e) => err(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerVolume {
    name: String,
    mountpoint: String,
    status: BTreeMap<String, Value>,
}

async fn get(State(state): State<PluginState>, body: Bytes) -> Response {
    let (s, req) = match (ready(&state), parse(&body)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let rec = match s.store.get_json::<VolumeRecord>(&keys::volume(&req.name)).await {
        Ok(Some(r)) => r.value,
        Ok(None) => return err(format!("volume {:?} does not exist", req.name)),
        Err(e) => return err(ApiError::from(e)),
    };
    let mountpoint = mountpoint_of(&s, &req.name).await.unwrap_or_default();
    let status: BTreeMap<String, Value> = [
        ("id".to_string(), json!(rec.id)),
        ("backend".to_string(), json!(rec.backend)),
        ("pool".to_string(), json!(rec.pool)),
        ("size".to_string(), json!(rec.size_bytes)),
        ("fs".to_string(), json!(rec.fs)),
        ("state".to_string(), json!(rec.state)),
        ("labels".to_string(), json!(rec.labels)),
    ]
    .into();
    reply(json!({ "Volume": DockerVolume { name: rec.name, mountpoint, status }, "Err": "" }))
}

async fn list(State(state): State<PluginState>) -> Response {
    let s = match ready(&state) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let (vols, atts) = match (s.list_volumes_raw().await, s.store.list_json::<AttachmentRecord>(&keys::all_attachments()).await) {
        (Ok(v), Ok(a)) => (v, a),
        (Err(e), _) => return err(e),
        (_, Err(e)) => return err(ApiError::from(e)),
    };
    let volumes: Vec<Value> = vols
        .into_iter()
        .map(|v| {
            let mp = atts
                .iter()
                .find(|a| a.value.volume == v.name && a.value.node == s.node())
                .and_then(|a| a.value.host.as_ref())
                .map(|h| h.mountpoint.display().to_string())
                .unwrap_or_default();
            json!({ "Name": v.name, "Mountpoint": mp })
        })
        .collect();
    reply(json!({ "Volumes": volumes, "Err": "" }))
}

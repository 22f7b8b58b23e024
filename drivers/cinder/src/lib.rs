//! # elara-driver-cinder: Elara volumes as OpenStack Block Storage (Cinder v3) volumes
//!
//! A block driver that talks to Cinder's v3 API over `wasi:http`; the backend must be granted
//! the Cinder endpoint (and Keystone, with Keystone auth) with `--allow-host`:
//!
//! ```text
//! elara backend add cinder1 --driver cinder --allow-host cinder.example:8776 --allow-host keystone.example:5000 \
//!     --config endpoint=http://cinder.example:8776/v3 --config auth_url=http://keystone.example:5000/v3 \
//!     --config username=elara --config password=... --config project_name=storage [--config volume_type=ssd]
//! elara backend add cinder-test --driver cinder --allow-host 127.0.0.1:8776 \
//!     --config endpoint=http://127.0.0.1:8776/v3 --config auth=noauth --config project_id=<project>
//! ```
//!
//! The keys are in [`settings::config_keys`] (`password`, `token` and
//! `application_credential_secret` are secret). Every call negotiates the highest microversion
//! both sides speak (at most 3.71; attach needs 3.27, its completion 3.44).
//!
//! - **Pools** ([`pools`]): Cinder's pools with their capacity and capabilities (admin), or one
//!   pool per volume type of unknown capacity. A create lands in the pool Elara's scheduler chose
//!   through a private pinning volume type.
//! - **Idempotency**: every Cinder volume and snapshot carries Elara's id in its metadata
//!   (`elara-id`), with the requested size (`elara-size-bytes`), the source snapshot
//!   (`elara-source`) and the backend's `elara-tag`. Every call first looks the object up by
//!   `elara-id`, so a create retried after a crash finds the volume the first attempt made (and
//!   waits for it), and a volume a failed attempt left in `error` is replaced.
//! - **Waiting**: transitional states (`creating`, `extending`, `deleting`, ...) are waited out by
//!   polling the object (0.1 s growing to 1 s, at most `timeout_secs`); an `error` state comes
//!   back as a `backend` error carrying Cinder's user message from `GET /messages` (e.g. "No
//!   valid backend" when no pool can hold the volume).
//! - **Attach** ([`connection`]): the attachments API with this node's connector (`host` = the
//!   Elara node name), completed with `os-complete`; Cinder's `connection_info` comes back as an
//!   `iscsi` connection (portal, iqn, lun, CHAP) or, for other protocols, `other` with its
//!   properties. Detach deletes this node's attachments.
//! - **Errors**: 404 → `not-found`; 400 → `invalid` naming the field Cinder's message names
//!   (else the call's own field); 413 → `backend` "quota exceeded"; 401/403 → `backend`;
//!   429/502-504 and transport failures → `unavailable`.
//!
//! Not supported: per-volume QoS (`set-qos` is `unsupported`: Cinder sets QoS through volume
//! types' QoS specs), real usage figures (`stats` reports the provisioned size as used).

pub mod api;
pub mod auth;
pub mod connection;
pub mod pools;
pub mod settings;

use std::collections::BTreeMap;

use api::{
    Api, CinderSnapshot, CinderVolume, Doing, MV_ATTACHMENT_COMPLETE, MV_ATTACHMENTS, SNAPSHOT_BUSY, VOLUME_BUSY,
};
use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info, warn};
use serde_json::{Value, json};
use settings::CinderSettings;

/// The driver. `export_driver!` turns it into the component's exports.
pub struct CinderDriver;

elara_driver_sdk::export_driver!(CinderDriver);

static SETTINGS: Settings<CinderSettings> = Settings::new();

const GIB: u64 = 1 << 30;

/// Metadata keys on Cinder objects.
const MD_ID: &str = "elara-id";
const MD_TAG: &str = "elara-tag";
const MD_NAME: &str = "elara-name";
const MD_SIZE: &str = "elara-size-bytes";
const MD_POOL: &str = "elara-pool";
const MD_SOURCE: &str = "elara-source";
const MD_VOLUME: &str = "elara-volume-id";
/// Prefix of `elara-attachment-<node>` = the Cinder attachment id of that node.
const MD_ATTACHMENT: &str = "elara-attachment-";

fn api() -> DriverResult<Api> {
    Ok(Api {
        settings: SETTINGS.get()?,
    })
}

/// Sizes in Cinder are whole GiB: round up.
fn gib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

fn check_id(field: &str, id: &str) -> DriverResult<()> {
    if id.is_empty() || id.len() > 255 {
        return Err(DriverError::invalid(
            field,
            "must be 1-255 characters (it is kept in Cinder metadata)",
        ));
    }
    Ok(())
}

/// The size Elara asked for (metadata), else Cinder's size.
fn requested_bytes(v: &CinderVolume) -> u64 {
    v.metadata
        .get(MD_SIZE)
        .and_then(|s| s.parse().ok())
        .unwrap_or(v.size * GIB)
}

fn to_volume(id: &str, v: &CinderVolume) -> Volume {
    Volume {
        id: id.to_string(),
        pool: v
            .metadata
            .get(MD_POOL)
            .cloned()
            .or_else(|| v.host.clone())
            .unwrap_or_default(),
        size_bytes: v.size * GIB,
        backend_ref: v.id.clone(),
    }
}

fn to_snapshot(id: &str, s: &CinderSnapshot) -> Snapshot {
    Snapshot {
        id: id.to_string(),
        volume_id: s.metadata.get(MD_VOLUME).cloned().unwrap_or_default(),
        size_bytes: s.size * GIB,
        backend_ref: s.id.clone(),
    }
}

/// The one live Cinder volume of Elara's volume `id`, waited out of transitional states.
fn the_volume(api: &Api, id: &str) -> DriverResult<CinderVolume> {
    check_id("volume-id", id)?;
    for v in api.volumes_of(id)? {
        if v.status == "deleting" {
            continue;
        }
        if let Some(v) = api.wait_volume(&v.id, VOLUME_BUSY, &format!("waiting for volume {id}"))? {
            return Ok(v);
        }
    }
    Err(DriverError::not_found(format!(
        "volume {id}: Cinder has no volume with metadata {MD_ID}={id}"
    )))
}

/// Create (or find again) the Cinder volume of `spec`, empty or from Cinder snapshot `source`.
fn create_volume(spec: &VolumeSpec, source: Option<(&str, &CinderSnapshot)>) -> DriverResult<Volume> {
    let api = api()?;
    check_id("id", &spec.id)?;
    if spec.size_bytes == 0 {
        return Err(DriverError::invalid("size", "must be greater than 0 bytes"));
    }
    if spec
        .qos
        .as_ref()
        .is_some_and(|q| q.iops.is_some() || q.bandwidth_bytes_per_sec.is_some())
    {
        return Err(DriverError::unsupported(
            "qos: per-volume limits are not supported by the cinder driver (Cinder applies QoS through volume types)",
        ));
    }
    let source_id = source.map(|(id, _)| id);
    let what = format!("creating volume {} ({})", spec.name, spec.id);

    // A retry finds what an earlier attempt made.
    let mut found: Option<CinderVolume> = None;
    for v in api.volumes_of(&spec.id)? {
        let Some(v) = api.wait_volume(&v.id, &["creating", "downloading"], &what)? else {
            continue;
        };
        match v.status.as_str() {
            "deleting" | "error_deleting" => continue,
            "error" => {
                // An attempt that failed: start over rather than keep a broken volume.
                let why = api.user_message(&v.id).unwrap_or_else(|| "no user message".into());
                info!(
                    "volume {}: replacing Cinder volume {} left in error ({why})",
                    spec.id, v.id
                );
                api.delete_volume(
                    &v.id,
                    &format!("removing the failed attempt {} of volume {}", v.id, spec.id),
                )?;
            }
            _ if found.is_none() => found = Some(v),
            _ => {
                warn!(
                    "volume {}: a second Cinder volume {} carries its id; removing it",
                    spec.id, v.id
                );
                api.delete_volume(&v.id, &format!("removing duplicate {} of volume {}", v.id, spec.id))?;
            }
        }
    }
    if let Some(v) = found {
        let have = requested_bytes(&v);
        if have != spec.size_bytes {
            return Err(DriverError::already_exists(format!(
                "volume {} exists (Cinder {}) with size {have} bytes, not {}",
                spec.id, v.id, spec.size_bytes
            )));
        }
        let made_from = v.metadata.get(MD_SOURCE).map(String::as_str);
        if made_from != source_id {
            let describe = |s: Option<&str>| s.map_or("empty".to_string(), |s| format!("from snapshot {s}"));
            return Err(DriverError::already_exists(format!(
                "volume {} exists (Cinder {}), created {}, not {}",
                spec.id,
                v.id,
                describe(made_from),
                describe(source_id)
            )));
        }
        debug!("volume {} already exists as Cinder volume {}", spec.id, v.id);
        return Ok(to_volume(&spec.id, &v));
    }

    let mut metadata = BTreeMap::from([
        (MD_ID, spec.id.clone()),
        (MD_TAG, api.settings.tag.clone()),
        (MD_NAME, spec.name.chars().take(255).collect()),
        (MD_SIZE, spec.size_bytes.to_string()),
        (MD_POOL, spec.pool.clone()),
    ]);
    let mut body = json!({
        "size": gib_ceil(spec.size_bytes),
        "name": spec.name,
        "description": format!("Elara volume {} ({})", spec.name, spec.id),
    });
    match source {
        Some((snapshot_id, snap)) => {
            // Cinder keeps the snapshot's volume type and places the volume beside it
            // (`snapshot_same_host`): in the pool of the snapshot's volume, whatever Elara chose.
            metadata.insert(MD_SOURCE, snapshot_id.to_string());
            body["snapshot_id"] = Value::String(snap.id.clone());
            if let Some(src) = api.volume(&snap.volume_id)?
                && let Some(pool) = src.metadata.get(MD_POOL).cloned().or(src.host)
            {
                if pool != spec.pool {
                    info!(
                        "volume {}: Cinder places it beside snapshot {snapshot_id}, in pool {pool} (not {})",
                        spec.id, spec.pool
                    );
                }
                metadata.insert(MD_POOL, pool);
            }
        }
        None => {
            let target = pools::target(&api, &spec.pool)?;
            body["volume_type"] = Value::String(pools::volume_type_for(&api, &target)?);
            if let Some(az) = &api.settings.availability_zone {
                body["availability_zone"] = Value::String(az.clone());
            }
        }
    }
    body["metadata"] = json!(metadata);
    let doing = Doing {
        what: &what,
        field: "size",
    };
    let made = api.call("POST", "/volumes", Some(&json!({ "volume": body })), None, doing)?;
    let uuid = made
        .pointer("/volume/id")
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::backend(format!("{what}: Cinder's answer has no volume id")))?
        .to_string();
    info!(
        "volume {}: Cinder volume {uuid} requested ({} GiB)",
        spec.id,
        gib_ceil(spec.size_bytes)
    );
    match api.wait_volume(&uuid, &["creating", "downloading"], &what)? {
        Some(v) if v.status == "available" => Ok(to_volume(&spec.id, &v)),
        Some(v) => Err(api.failure(&uuid, &format!("{what}: Cinder volume {uuid} went to {}", v.status))),
        None => Err(DriverError::backend(format!(
            "{what}: Cinder volume {uuid} disappeared while being created"
        ))),
    }
}

/// The live Cinder snapshot of Elara's snapshot `id`, if any.
fn find_snapshot(api: &Api, id: &str) -> DriverResult<Option<CinderSnapshot>> {
    for s in api.snapshots_of(id)? {
        if s.status == "deleting" {
            continue;
        }
        if let Some(s) = api.wait_snapshot(&s.id, SNAPSHOT_BUSY, &format!("waiting for snapshot {id}"))? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// The connection of `info` for `node`; an iSCSI one also names the initiator the target was
/// opened for (`initiator` in `extra`), which the host must log in with.
fn node_connection(info: &Value, node: &NodeInfo) -> DriverResult<Connection> {
    let mut conn = connection::from_connection_info(info)?;
    if let Connection::Iscsi(c) = &mut conn
        && !c.extra.iter().any(|(k, _)| k == "initiator")
    {
        c.extra.push(("initiator".into(), connection::initiator(node)));
        c.extra.sort();
    }
    Ok(conn)
}

/// The metadata key that records this node's attachment of a volume (its Cinder attachment id).
/// Written before the attachment is completed, so a retried attach finds an attachment even
/// where Cinder hides `host_name` (non-admin credentials).
fn attachment_key(node: &NodeInfo) -> String {
    format!("{MD_ATTACHMENT}{}", node.name)
}

/// Ids of this node's attachments of `v`: the recorded one and any whose `host_name` is the node.
fn node_attachments(v: &CinderVolume, node: &NodeInfo) -> Vec<String> {
    let mut ids: Vec<String> = v.metadata.get(&attachment_key(node)).into_iter().cloned().collect();
    for a in &v.attachments {
        if a.host_name.as_deref() == Some(node.name.as_str()) && !ids.contains(&a.attachment_id) {
            ids.push(a.attachment_id.clone());
        }
    }
    ids
}

fn set_metadata(api: &Api, uuid: &str, key: &str, value: &str, what: &str) -> DriverResult<()> {
    let body = json!({ "metadata": { key: value } });
    api.call(
        "POST",
        &format!("/volumes/{uuid}/metadata"),
        Some(&body),
        None,
        Doing {
            what,
            field: "volume-id",
        },
    )?;
    Ok(())
}

fn delete_metadata(api: &Api, uuid: &str, key: &str, what: &str) -> DriverResult<()> {
    let resp = api.raw(
        "DELETE",
        &format!("/volumes/{uuid}/metadata/{}", api::encode(key)),
        None,
        None,
    )?;
    if resp.is_success() || resp.status == 404 {
        return Ok(());
    }
    Err(api::status_error(
        resp.status,
        &resp.text(),
        Doing {
            what,
            field: "volume-id",
        },
    ))
}

impl Guest for CinderDriver {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "cinder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: VolumeKind::Block,
            features: Features::SNAPSHOT | Features::CLONE | Features::RESIZE,
            config_keys: settings::config_keys(),
            notes: vec![
                ("scope".into(), "cluster".into()),
                (
                    "api".into(),
                    "OpenStack Block Storage (Cinder) v3, microversion up to 3.71".into(),
                ),
                (
                    "connection".into(),
                    "iscsi (other protocols are reported as `other`)".into(),
                ),
                ("sizes".into(), "whole GiB in Cinder: sizes are rounded up".into()),
                (
                    "stats".into(),
                    "Cinder does not report usage: used = the provisioned size".into(),
                ),
                (
                    "qos".into(),
                    "not supported per volume: Cinder applies QoS through volume types".into(),
                ),
            ],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        elara_driver_sdk::log::install_panic_hook();
        let settings = settings::parse(config)?;
        auth::forget();
        debug!("configured: endpoint {}, pools {:?}", settings.endpoint, settings.pools);
        SETTINGS.set(settings);
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        Ok(pools::list(&api()?)?.into_iter().map(|(p, _)| p).collect())
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        let api = api()?;
        let tag = api.settings.tag.clone();
        Ok(api
            .volumes_with(&[(MD_TAG, &tag)])?
            .iter()
            .filter_map(|v| v.metadata.get(MD_ID).map(|id| to_volume(id, v)))
            .collect())
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        create_volume(&spec, None)
    }

    fn create_from_snapshot(spec: VolumeSpec, snapshot_id: String) -> DriverResult<Volume> {
        let api = api()?;
        check_id("snapshot-id", &snapshot_id)?;
        let snap = find_snapshot(&api, &snapshot_id)?.ok_or_else(|| {
            DriverError::not_found(format!(
                "snapshot {snapshot_id}: Cinder has no snapshot with {MD_ID}={snapshot_id}"
            ))
        })?;
        if snap.status != "available" {
            return Err(DriverError::backend(format!(
                "snapshot {snapshot_id} (Cinder {}) is {}",
                snap.id, snap.status
            )));
        }
        if gib_ceil(spec.size_bytes) < snap.size {
            return Err(DriverError::invalid(
                "size",
                format!(
                    "{} bytes is smaller than snapshot {snapshot_id} ({} GiB)",
                    spec.size_bytes, snap.size
                ),
            ));
        }
        create_volume(&spec, Some((&snapshot_id, &snap)))
    }

    fn delete(volume_id: String) -> DriverResult<()> {
        let api = api()?;
        check_id("volume-id", &volume_id)?;
        for v in api.volumes_of(&volume_id)? {
            let what = format!("deleting volume {volume_id} (Cinder {})", v.id);
            // Attachments left by an interrupted attach or detach go first.
            if !matches!(v.status.as_str(), "available" | "error" | "deleting") {
                for a in api.attachments_of(&v.id)? {
                    info!(
                        "volume {volume_id}: deleting leftover attachment {} ({})",
                        a.id, a.status
                    );
                    api.delete_attachment(&a.id)?;
                }
            }
            api.delete_volume(&v.id, &what)?;
            info!("volume {volume_id}: Cinder volume {} deleted", v.id);
        }
        Ok(())
    }

    fn resize(volume_id: String, size_bytes: u64) -> DriverResult<Volume> {
        let api = api()?;
        let v = the_volume(&api, &volume_id)?;
        let have = requested_bytes(&v);
        if size_bytes < have {
            return Err(DriverError::invalid(
                "size",
                format!("{size_bytes} bytes is smaller than the volume ({have} bytes): volumes can only grow"),
            ));
        }
        let what = format!("extending volume {volume_id} (Cinder {}) to {size_bytes} bytes", v.id);
        let mut v = v;
        let want = gib_ceil(size_bytes);
        if want > v.size {
            let body = json!({ "os-extend": { "new_size": want } });
            api.call(
                "POST",
                &format!("/volumes/{}/action", v.id),
                Some(&body),
                None,
                Doing {
                    what: &what,
                    field: "size",
                },
            )?;
            v = match api.wait_volume(&v.id, &["extending"], &what)? {
                Some(v) if v.size >= want && !v.status.starts_with("error") => v,
                Some(v) => {
                    return Err(api.failure(&v.id, &format!("{what}: Cinder left it {} at {} GiB", v.status, v.size)));
                }
                None => return Err(DriverError::not_found(format!("{what}: the volume disappeared"))),
            };
            info!("volume {volume_id}: extended to {want} GiB");
        }
        if size_bytes != have {
            // Recorded after the extend: a retry after a crash in between extends nothing and records.
            let body = json!({ "metadata": { MD_SIZE: size_bytes.to_string() } });
            api.call(
                "POST",
                &format!("/volumes/{}/metadata", v.id),
                Some(&body),
                None,
                Doing {
                    what: &what,
                    field: "size",
                },
            )?;
            v.metadata.insert(MD_SIZE.into(), size_bytes.to_string());
        }
        Ok(to_volume(&volume_id, &v))
    }

    fn snapshot_create(spec: SnapshotSpec) -> DriverResult<Snapshot> {
        let api = api()?;
        check_id("id", &spec.id)?;
        check_id("volume-id", &spec.volume_id)?;
        let what = format!("snapshotting volume {} as {}", spec.volume_id, spec.id);
        for s in api.snapshots_of(&spec.id)? {
            let Some(s) = api.wait_snapshot(&s.id, &["creating"], &what)? else {
                continue;
            };
            match s.status.as_str() {
                "deleting" | "error_deleting" => continue,
                "error" => {
                    info!("snapshot {}: replacing Cinder snapshot {} left in error", spec.id, s.id);
                    api.delete_snapshot(
                        &s.id,
                        &format!("removing the failed attempt {} of snapshot {}", s.id, spec.id),
                    )?;
                }
                _ => {
                    let of = s.metadata.get(MD_VOLUME).map(String::as_str).unwrap_or("");
                    if of != spec.volume_id {
                        return Err(DriverError::already_exists(format!(
                            "snapshot {} exists (Cinder {}) for volume {of}, not {}",
                            spec.id, s.id, spec.volume_id
                        )));
                    }
                    return Ok(to_snapshot(&spec.id, &s));
                }
            }
        }
        let v = the_volume(&api, &spec.volume_id)?;
        let mut body = json!({
            "volume_id": v.id,
            "name": spec.name,
            "description": format!("Elara snapshot {} ({}) of volume {}", spec.name, spec.id, spec.volume_id),
            "metadata": { MD_ID: spec.id, MD_TAG: api.settings.tag, MD_VOLUME: spec.volume_id },
        });
        // Snapshots of attached volumes: `force` before 3.66, allowed without it since.
        if api.microversion()? < api::Microversion(3, 66) {
            body["force"] = Value::Bool(true);
        }
        let made = api.call(
            "POST",
            "/snapshots",
            Some(&json!({ "snapshot": body })),
            None,
            Doing {
                what: &what,
                field: "volume-id",
            },
        )?;
        let uuid = made
            .pointer("/snapshot/id")
            .and_then(Value::as_str)
            .ok_or_else(|| DriverError::backend(format!("{what}: Cinder's answer has no snapshot id")))?
            .to_string();
        match api.wait_snapshot(&uuid, &["creating"], &what)? {
            Some(s) if s.status == "available" => {
                info!("snapshot {}: Cinder snapshot {uuid} of volume {}", spec.id, v.id);
                Ok(to_snapshot(&spec.id, &s))
            }
            Some(s) => Err(api.failure(&uuid, &format!("{what}: Cinder snapshot {uuid} went to {}", s.status))),
            None => Err(DriverError::backend(format!(
                "{what}: Cinder snapshot {uuid} disappeared while being created"
            ))),
        }
    }

    fn snapshot_delete(snapshot_id: String) -> DriverResult<()> {
        let api = api()?;
        check_id("snapshot-id", &snapshot_id)?;
        for s in api.snapshots_of(&snapshot_id)? {
            api.delete_snapshot(&s.id, &format!("deleting snapshot {snapshot_id} (Cinder {})", s.id))?;
            info!("snapshot {snapshot_id}: Cinder snapshot {} deleted", s.id);
        }
        Ok(())
    }

    fn attach(volume_id: String, node: NodeInfo) -> DriverResult<Connection> {
        let api = api()?;
        let mv = api.microversion()?;
        if mv < MV_ATTACHMENTS {
            return Err(DriverError::unsupported(format!(
                "attach: this Cinder speaks microversion {mv}; the attachments API needs {MV_ATTACHMENTS}"
            )));
        }
        let v = the_volume(&api, &volume_id)?;
        let what = format!("attaching volume {volume_id} (Cinder {}) to node {}", v.id, node.name);
        let doing = Doing {
            what: &what,
            field: "volume-id",
        };
        let key = attachment_key(&node);
        // Attached already (a retried attach): the same connection; one a crash left reserved
        // is completed.
        for id in node_attachments(&v, &node) {
            let Some(att) = api.attachment(&id)? else { continue };
            let Some(info) = att
                .connection_info
                .as_ref()
                .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
            else {
                continue;
            };
            let conn = node_connection(info, &node)?;
            if att.status != "attached" && mv >= MV_ATTACHMENT_COMPLETE {
                let body = json!({ "os-complete": null });
                api.call(
                    "POST",
                    &format!("/attachments/{id}/action"),
                    Some(&body),
                    Some(MV_ATTACHMENT_COMPLETE),
                    doing,
                )?;
            }
            return Ok(conn);
        }
        // Other unfinished attachments are what an interrupted attach left: remove them.
        let completed: Vec<&str> = v.attachments.iter().map(|a| a.attachment_id.as_str()).collect();
        for a in api.attachments_of(&v.id)? {
            if !completed.contains(&a.id.as_str()) {
                info!(
                    "volume {volume_id}: deleting unfinished attachment {} ({})",
                    a.id, a.status
                );
                api.delete_attachment(&a.id)?;
            }
        }
        let body =
            json!({ "attachment": { "volume_uuid": v.id, "connector": connection::connector(&node), "mode": "rw" } });
        let made = api.call("POST", "/attachments", Some(&body), None, doing)?;
        let att: api::CinderAttachment = serde_json::from_value(made.get("attachment").cloned().unwrap_or_default())
            .map_err(|e| DriverError::backend(format!("{what}: unexpected attachment from Cinder: {e}")))?;
        // Record, map and complete; on failure the attachment is removed again, so nothing is
        // left reserved.
        let finish = || -> DriverResult<Connection> {
            set_metadata(&api, &v.id, &key, &att.id, &what)?;
            let info = att
                .connection_info
                .clone()
                .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                .ok_or_else(|| DriverError::backend(format!("{what}: Cinder returned no connection info")))?;
            let conn = node_connection(&info, &node).map_err(|e| e.with_context(&what))?;
            if mv >= MV_ATTACHMENT_COMPLETE {
                let body = json!({ "os-complete": null });
                api.call(
                    "POST",
                    &format!("/attachments/{}/action", att.id),
                    Some(&body),
                    Some(MV_ATTACHMENT_COMPLETE),
                    doing,
                )?;
            }
            Ok(conn)
        };
        let conn = match finish() {
            Ok(conn) => conn,
            Err(e) => {
                if let Err(undo) = api
                    .delete_attachment(&att.id)
                    .and_then(|_| delete_metadata(&api, &v.id, &key, &what))
                {
                    warn!(
                        "{what}: removing attachment {} after a failure failed too: {}",
                        att.id,
                        undo.message()
                    );
                }
                return Err(e);
            }
        };
        info!(
            "volume {volume_id}: attached to node {} (Cinder attachment {})",
            node.name, att.id
        );
        Ok(conn)
    }

    fn detach(volume_id: String, node: NodeInfo) -> DriverResult<()> {
        let api = api()?;
        check_id("volume-id", &volume_id)?;
        let v = match the_volume(&api, &volume_id) {
            Ok(v) => v,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let completed: Vec<&str> = v.attachments.iter().map(|a| a.attachment_id.as_str()).collect();
        let mut ids = node_attachments(&v, &node);
        if v.status != "available" {
            for a in api.attachments_of(&v.id)? {
                if !completed.contains(&a.id.as_str()) && !ids.contains(&a.id) {
                    ids.push(a.id);
                }
            }
        }
        for id in &ids {
            api.delete_attachment(id)?;
            info!(
                "volume {volume_id}: Cinder attachment {id} of node {} deleted",
                node.name
            );
        }
        let key = attachment_key(&node);
        if v.metadata.contains_key(&key) {
            delete_metadata(
                &api,
                &v.id,
                &key,
                &format!("detaching volume {volume_id} from node {}", node.name),
            )?;
        }
        Ok(())
    }

    fn stats(volume_id: String) -> DriverResult<VolumeStats> {
        let api = api()?;
        let v = the_volume(&api, &volume_id)?;
        Ok(VolumeStats {
            size_bytes: v.size * GIB,
            used_bytes: v.size * GIB,
            objects: None,
        })
    }

    fn set_qos(_volume_id: String, _qos: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported(
            "set-qos: the cinder driver does not set per-volume limits (Cinder applies QoS through volume types)",
        ))
    }
}

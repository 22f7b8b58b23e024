//! Mounting volumes on this node, reference-counted by holders.
//!
//! A volume brought up on a node has one [`AttachmentRecord`] (`attachments/<volume>/<node>`) whose
//! `holders` are the REST mounts and Docker mount IDs using it. The first holder attaches (driver
//! `attach`, then the host brings the connection up, formats on first use, mounts); the last one to
//! leave tears down exactly what was set up. Adding or removing a holder of an attached volume is a
//! CAS on the attachment alone; bringing it up or down also takes the volume's lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use elara_runtime::NodeInfo;
use elara_store::StoreExt;

use super::{Elara, del, faults, put, raced, rev};
use crate::attach::{AttachRequest, AttachState, MountSecurity, bind_path};
use crate::error::{ApiError, ApiResult};
use crate::model::*;

/// How long a mount or unmount waits for another operation on the same volume to finish.
const BUSY_WAIT: Duration = Duration::from_secs(120);

impl Elara {
    pub fn node_info(&self) -> NodeInfo {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        NodeInfo {
            name: self.node().to_string(),
            connector: vec![("hostname".into(), hostname)],
        }
    }

    /// Mount `name` on this node for `holder` and return the mountpoint. Idempotent per holder.
    /// With `path`, the volume is also bind-mounted there for this holder.
    pub async fn mount_volume(&self, name: &str, holder: &str, path: Option<PathBuf>) -> ApiResult<PathBuf> {
        if let Some(p) = &path {
            bind_path::check(p, &self.cfg.mount_path_roots).map_err(path_error)?;
        }
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.try_mount(name, holder, path.clone()).await {
                Err(e) if e.code == "busy" && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_mount(&self, name: &str, holder: &str, path: Option<PathBuf>) -> ApiResult<PathBuf> {
        let vol = self
            .get::<VolumeRecord>(&keys::volume(name))
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?
            .value;
        if let Some(node) = &vol.node
            && node != self.node()
        {
            return Err(ApiError::conflict(format!(
                "volume {name:?} lives on node {node:?}; mount it there"
            )));
        }
        let att_key = keys::attachment(name, self.node());
        if let Some(att) = self.get::<AttachmentRecord>(&att_key).await? {
            if att.value.state == AttachmentState::Failed {
                return self.remount_failed(&vol, att, holder, path).await;
            }
            if att.value.state != AttachmentState::Attached {
                return Err(ApiError::busy(
                    "volume",
                    name,
                    &format!("{:?}", att.value.state).to_lowercase(),
                ));
            }
            let host = att
                .value
                .host
                .clone()
                .ok_or_else(|| ApiError::internal("attached without host state"))?;
            if att.value.holders.contains_key(holder) {
                return Ok(host.mountpoint);
            }
            let mount_id = match &path {
                Some(p) => Some(self.bind_at(&host.mountpoint, p)?),
                None => None,
            };
            let mut a = att.value;
            a.holders.insert(
                holder.to_string(),
                Holder {
                    since: now(),
                    path: path.clone(),
                    mount_id,
                },
            );
            a.updated_at = now();
            if !self
                .txn(vec![rev(att_key.clone(), att.revision)], vec![put(att_key, &a)])
                .await?
            {
                if let (Some(p), Some(id)) = (&path, mount_id) {
                    let _ = bind_path::unbind(p, id);
                }
                return Err(ApiError::busy("volume", name, "attachment update"));
            }
            return Ok(host.mountpoint);
        }

        // First holder on this node: bring the volume up under its lock.
        let (_, backend) = self.backends.get(&vol.backend).await?;
        let kind = backend.driver().info().kind;
        let others = self
            .store
            .list_json::<AttachmentRecord>(&keys::attachments(name))
            .await?;
        if kind == elara_runtime::VolumeKind::Block && !others.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {name:?} is a block volume already attached on node {}; it can be used on one node at a time",
                others[0].value.node
            )));
        }
        let params = serde_json::json!({ "volume_id": vol.id, "holder": holder, "path": path });
        let op = self.new_op(OpKind::Attach, name, None, params);
        let key = keys::volume(name);
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", name, other));
        }
        if cur.value.state != VolumeState::Available {
            return Err(ApiError::conflict(
                format!("volume {name:?} is {:?}", cur.value.state).to_lowercase(),
            ));
        }
        let mut locked = cur.value.clone();
        locked.op = Some(op.id.clone());
        let att = AttachmentRecord {
            v: SCHEMA,
            volume: name.to_string(),
            volume_id: vol.id.clone(),
            node: self.node().to_string(),
            state: AttachmentState::Attaching,
            connection: None,
            host: None,
            holders: [(
                holder.to_string(),
                Holder {
                    since: now(),
                    path: path.clone(),
                    mount_id: None,
                },
            )]
            .into(),
            updated_at: now(),
            error: None,
        };
        let ok = self
            .txn(
                vec![rev(key.clone(), cur.revision), super::absent(att_key.clone())],
                vec![
                    put(key, &locked),
                    put(att_key.clone(), &att),
                    put(keys::op(&op.id), &op),
                ],
            )
            .await?;
        if !ok {
            return Err(ApiError::busy("volume", name, "attach"));
        }
        faults::point("mount:after-intent");
        self.bring_up_or_undo(op, &locked, att, holder, path).await
    }

    /// The forward steps of an attach whose intent is recorded; on failure, undo them.
    async fn bring_up_or_undo(
        &self,
        mut op: OpRecord,
        locked: &VolumeRecord,
        mut att: AttachmentRecord,
        holder: &str,
        path: Option<PathBuf>,
    ) -> ApiResult<PathBuf> {
        let name = locked.name.as_str();
        match self.bring_up(&mut op, locked, &mut att).await {
            Ok(mountpoint) => {
                let Some(p) = &path else { return Ok(mountpoint) };
                match self.bind_at(&mountpoint, p) {
                    Ok(id) => {
                        self.record_bind(name, holder, id).await?;
                        Ok(mountpoint)
                    }
                    // The volume came up for this holder alone: take it down again.
                    Err(e) => {
                        tracing::warn!(volume = %name, "bind at {} failed: {e}; unmounting the volume", p.display());
                        if let Err(undo) = self.unmount_volume(name, holder).await {
                            tracing::error!(volume = %name, "undoing the mount failed: {undo}; the reconciler will retry");
                        }
                        Err(e)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(volume = %name, "mount failed: {e}; undoing");
                if let Err(undo) = self.tear_down(&mut op, locked, &att).await {
                    tracing::error!(volume = %name, "undo of a failed mount failed: {undo}; the reconciler will retry");
                    self.op_abandon(&mut op, &format!("{e}; undo: {undo}")).await;
                }
                Err(e)
            }
        }
    }

    /// A mount of a volume whose attachment failed here (its helper died): under the volume's
    /// lock, take down what is left of the old bring-up and bring it up anew, keeping its holders.
    async fn remount_failed(
        &self,
        vol: &VolumeRecord,
        att: elara_store::Record<AttachmentRecord>,
        holder: &str,
        path: Option<PathBuf>,
    ) -> ApiResult<PathBuf> {
        let name = vol.name.as_str();
        let key = keys::volume(name);
        let att_key = keys::attachment(name, self.node());
        let cur = self
            .get::<VolumeRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", name, other));
        }
        let params = serde_json::json!({ "volume_id": vol.id, "holder": holder, "path": path });
        let mut op = self.new_op(OpKind::Attach, name, None, params);
        let mut locked = cur.value.clone();
        locked.op = Some(op.id.clone());
        let mut a = att.value.clone();
        let old_host = a.host.take();
        a.state = AttachmentState::Attaching;
        a.holders.insert(
            holder.to_string(),
            Holder {
                since: now(),
                path: path.clone(),
                mount_id: None,
            },
        );
        a.updated_at = now();
        let ok = self
            .txn(
                vec![rev(key.clone(), cur.revision), rev(att_key.clone(), att.revision)],
                vec![put(key, &locked), put(att_key, &a), put(keys::op(&op.id), &op)],
            )
            .await?;
        if !ok {
            return Err(ApiError::busy("volume", name, "attach"));
        }
        tracing::warn!(volume = %name, error = a.error.as_deref().unwrap_or(""), "mounting a failed attachment anew");
        let taken_down = match &old_host {
            Some(host) => self.attacher.detach(host).await,
            None => self.attacher.detach_by_volume(&vol.id, None).await,
        };
        if let Err(e) = taken_down {
            let e = ApiError::new(
                500,
                "detach-failed",
                format!("volume {name}: taking down its failed attachment: {e}"),
            );
            self.op_abandon(&mut op, &e.to_string()).await;
            return Err(e);
        }
        a.error = None;
        self.bring_up_or_undo(op, &locked, a, holder, path).await
    }

    /// Mark attachments on this node whose helper process has gone as failed (their I/O fails),
    /// so `volume inspect` and `/v1/health` say so and the next mount brings them up anew.
    /// Returns the volumes it marked.
    pub async fn watch_helpers(&self) -> ApiResult<Vec<String>> {
        let mut marked = vec![];
        for rec in self
            .store
            .list_json::<AttachmentRecord>(&keys::all_attachments())
            .await?
        {
            let att = rec.value;
            if att.node != self.node() || att.state != AttachmentState::Attached {
                continue;
            }
            let Some(host) = &att.host else { continue };
            let stalled = match &att.connection {
                Some(elara_runtime::Connection::Iscsi(c)) if host.helper.is_some() => self
                    .attacher
                    .iscsi_watchdog(&att.volume_id, host, c)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(volume = %att.volume, "iSCSI stall check: {e}");
                        None
                    }),
                _ => None,
            };
            let Some(why) = stalled.or_else(|| host.failure()) else {
                continue;
            };
            let key = keys::attachment(&att.volume, &att.node);
            let mut a = att.clone();
            a.state = AttachmentState::Failed;
            a.error = Some(why.clone());
            a.updated_at = now();
            if self
                .txn(vec![rev(key.clone(), rec.revision)], vec![put(key, &a)])
                .await?
            {
                tracing::error!(volume = %att.volume, "attachment failed: {why}");
                marked.push(att.volume.clone());
            }
        }
        Ok(marked)
    }

    /// The attachments on this node that have failed: `(volume, why)`.
    pub async fn failed_attachments(&self) -> ApiResult<Vec<(String, String)>> {
        Ok(self
            .store
            .list_json::<AttachmentRecord>(&keys::all_attachments())
            .await?
            .into_iter()
            .map(|r| r.value)
            .filter(|a| a.node == self.node() && a.state == AttachmentState::Failed)
            .map(|a| (a.volume, a.error.unwrap_or_default()))
            .collect())
    }

    /// Driver attach, host attach, record: the attach op's forward steps.
    async fn bring_up(&self, op: &mut OpRecord, vol: &VolumeRecord, att: &mut AttachmentRecord) -> ApiResult<PathBuf> {
        let (backend_rec, backend) = self.backends.get(&vol.backend).await?;
        let connection = backend
            .attach(&vol.id, &self.node_info())
            .await
            .map_err(|e| ApiError::from_call(&vol.backend, e))?;
        att.connection = Some(connection.clone());
        self.store
            .put(
                &keys::attachment(&vol.name, self.node()),
                elara_store::encode(&*att),
                None,
            )
            .await?;
        faults::point("mount:after-driver-attach");
        self.op_step(op, "driver-attached").await?;

        let pool_dir = self.backends.pool_dir(&vol.backend);
        let security = self.mount_security(vol).await?;
        let state = self
            .attacher
            .attach(AttachRequest {
                volume_id: &vol.id,
                pool_dir: &pool_dir,
                connection: &connection,
                fs_type: vol.fs.into(),
                read_only: false,
                grants: &super::backends::grants_of(&backend_rec),
                security,
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    500,
                    "attach-failed",
                    format!("volume {} (backend {}): {e}", vol.name, vol.backend),
                )
            })?;
        faults::point("mount:after-host-attach");
        att.host = Some(state.clone());
        att.state = AttachmentState::Attached;
        att.error = None;
        att.updated_at = now();
        let att_key = keys::attachment(&vol.name, self.node());
        let vkey = keys::volume(&vol.name);
        let cur = self
            .get::<VolumeRecord>(&vkey)
            .await?
            .ok_or_else(|| ApiError::internal("volume vanished during mount"))?;
        let mut v = cur.value;
        v.op = None;
        v.formatted = v.formatted || state.formatted_now;
        if !self
            .txn(
                vec![rev(vkey.clone(), cur.revision)],
                vec![put(vkey, &v), put(att_key, &*att), del(keys::op(&op.id))],
            )
            .await?
        {
            return Err(raced("volume", &vol.name));
        }
        tracing::info!(volume = %vol.name, mountpoint = %state.mountpoint.display(), "volume mounted");
        Ok(state.mountpoint)
    }

    /// Undo an attach (or finish a detach): host teardown, driver detach, drop the attachment and the
    /// lock. Safe to repeat at any point.
    pub(crate) async fn tear_down(
        &self,
        op: &mut OpRecord,
        vol: &VolumeRecord,
        att: &AttachmentRecord,
    ) -> ApiResult<()> {
        for h in att.holders.values() {
            unbind_holder(h, att.host.as_ref(), &self.cfg.mount_path_roots)?;
        }
        match &att.host {
            Some(state) => self.attacher.detach(state).await,
            None => {
                let backing = match &att.connection {
                    Some(elara_runtime::Connection::ImageFile(f)) => {
                        crate::attach::image_path(&self.backends.pool_dir(&vol.backend), &f.path)
                    }
                    _ => None,
                };
                self.attacher.detach_by_volume(&vol.id, backing.as_deref()).await
            }
        }
        .map_err(|e| ApiError::new(500, "detach-failed", format!("volume {}: {e}", vol.name)))?;
        faults::point("unmount:after-host-detach");
        self.op_step(op, "host-detached").await?;
        let (_, backend) = self.backends.get(&vol.backend).await?;
        backend
            .detach(&vol.id, &self.node_info())
            .await
            .map_err(|e| ApiError::from_call(&vol.backend, e))?;
        let att_key = keys::attachment(&vol.name, &att.node);
        let vkey = keys::volume(&vol.name);
        let mut ops = vec![del(att_key), del(keys::op(&op.id))];
        let mut cmps = vec![];
        if let Some(cur) = self.get::<VolumeRecord>(&vkey).await?
            && cur.value.op.as_deref() == Some(op.id.as_str())
        {
            let mut v = cur.value;
            v.op = None;
            cmps.push(rev(vkey.clone(), cur.revision));
            ops.push(put(vkey, &v));
        }
        if !self.txn(cmps, ops).await? {
            return Err(raced("volume", &vol.name));
        }
        Ok(())
    }

    /// Drop `holder` from the volume on this node; the last holder tears it down. Idempotent.
    pub async fn unmount_volume(&self, name: &str, holder: &str) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.try_unmount(name, holder).await {
                Err(e) if e.code == "busy" && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_unmount(&self, name: &str, holder: &str) -> ApiResult<()> {
        let att_key = keys::attachment(name, self.node());
        let Some(att) = self.get::<AttachmentRecord>(&att_key).await? else {
            if self.store.get(&keys::volume(name)).await?.is_none() {
                return Err(ApiError::not_found("volume", name));
            }
            return Ok(());
        };
        if !matches!(att.value.state, AttachmentState::Attached | AttachmentState::Failed) {
            return Err(ApiError::busy(
                "volume",
                name,
                &format!("{:?}", att.value.state).to_lowercase(),
            ));
        }
        let Some(h) = att.value.holders.get(holder).cloned() else {
            return Ok(());
        };
        if att.value.holders.len() > 1 {
            unbind_holder(&h, att.value.host.as_ref(), &self.cfg.mount_path_roots)?;
            let mut a = att.value;
            a.holders.remove(holder);
            a.updated_at = now();
            if !self
                .txn(vec![rev(att_key.clone(), att.revision)], vec![put(att_key, &a)])
                .await?
            {
                return Err(ApiError::busy("volume", name, "attachment update"));
            }
            return Ok(());
        }
        // Last holder: take the volume lock and tear down.
        let vkey = keys::volume(name);
        let cur = self
            .get::<VolumeRecord>(&vkey)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", name))?;
        if let Some(other) = &cur.value.op {
            return Err(ApiError::busy("volume", name, other));
        }
        let params = serde_json::json!({ "volume_id": cur.value.id, "holder": holder });
        let mut op = self.new_op(OpKind::Detach, name, None, params);
        let mut v = cur.value.clone();
        v.op = Some(op.id.clone());
        let mut a = att.value.clone();
        a.state = AttachmentState::Detaching;
        a.updated_at = now();
        let ok = self
            .txn(
                vec![rev(vkey.clone(), cur.revision), rev(att_key.clone(), att.revision)],
                vec![put(vkey, &v), put(att_key, &a), put(keys::op(&op.id), &op)],
            )
            .await?;
        if !ok {
            return Err(ApiError::busy("volume", name, "detach"));
        }
        faults::point("unmount:after-intent");
        if let Err(e) = self.tear_down(&mut op, &v, &a).await {
            self.op_abandon(&mut op, &e.to_string()).await;
            return Err(e);
        }
        tracing::info!(volume = %name, "volume unmounted");
        Ok(())
    }

    /// After a resize: grow the loop device and the filesystem of a volume mounted on this node.
    pub(crate) async fn grow_attached(&self, vol: &VolumeRecord) -> ApiResult<()> {
        let Some(att) = self
            .get::<AttachmentRecord>(&keys::attachment(&vol.name, self.node()))
            .await?
        else {
            return Ok(());
        };
        let Some(state) = att.value.host else {
            return Ok(());
        };
        self.attacher
            .grow(&state, vol.size_bytes, vol.fs.into())
            .await
            .map_err(|e| {
                ApiError::new(
                    500,
                    "resize-failed",
                    format!("volume {}: growing it where it is mounted: {e}", vol.name),
                )
            })
    }

    /// The mount flags for `vol`: `nosuid,nodev` unless its volume type lifts them.
    async fn mount_security(&self, vol: &VolumeRecord) -> ApiResult<MountSecurity> {
        let mut security = MountSecurity::default();
        let Some(t) = &vol.volume_type else { return Ok(security) };
        // A type deleted since the volume was made lifts nothing.
        let Some(ty) = self.get::<VolumeTypeRecord>(&keys::volume_type(t)).await? else {
            return Ok(security);
        };
        if let Some(v) = ty.value.specs.get(MountSecurity::SPEC_NOSUID) {
            security.nosuid = super::types::flag_spec(MountSecurity::SPEC_NOSUID, v)?;
        }
        if let Some(v) = ty.value.specs.get(MountSecurity::SPEC_NODEV) {
            security.nodev = super::types::flag_spec(MountSecurity::SPEC_NODEV, v)?;
        }
        Ok(security)
    }

    /// The mountpoint of a block volume mounted on this node, for freezing during a snapshot.
    pub(crate) async fn mounted_block(&self, vol: &VolumeRecord) -> ApiResult<Option<AttachState>> {
        let att = self
            .get::<AttachmentRecord>(&keys::attachment(&vol.name, self.node()))
            .await?;
        Ok(att.and_then(|a| a.value.host).filter(|h| h.device.is_some()))
    }
}

impl Elara {
    /// Bind the volume mounted at `mountpoint` at a REST client's `path` (see [`bind_path`]).
    fn bind_at(&self, mountpoint: &Path, path: &Path) -> ApiResult<u64> {
        let security = MountSecurity::default();
        bind_path::bind(mountpoint, path, &self.cfg.mount_path_roots, false, security).map_err(path_error)
    }

    /// Note the id of the bind mount made for `holder` (a first holder's intent had none yet).
    async fn record_bind(&self, name: &str, holder: &str, mount_id: u64) -> ApiResult<()> {
        let key = keys::attachment(name, self.node());
        for _ in 0..10 {
            let Some(cur) = self.get::<AttachmentRecord>(&key).await? else {
                return Ok(());
            };
            let mut a = cur.value;
            let Some(h) = a.holders.get_mut(holder) else {
                return Ok(());
            };
            h.mount_id = Some(mount_id);
            if self
                .txn(vec![rev(key.clone(), cur.revision)], vec![put(key.clone(), &a)])
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::busy("volume", name, "attachment update"))
    }
}

fn path_error(e: bind_path::BindPathError) -> ApiError {
    match e {
        bind_path::BindPathError::Refused { .. } => ApiError::invalid("path", e.to_string()),
        bind_path::BindPathError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

/// Remove the bind mount a holder's `path` has, and only that: by the mount id Elara recorded,
/// or (a record from before ids were kept, or a crash between the bind and its record) only if
/// the mount there is of the volume's own file system.
fn unbind_holder(h: &Holder, host: Option<&AttachState>, roots: &[PathBuf]) -> ApiResult<()> {
    let Some(p) = &h.path else { return Ok(()) };
    // The record may be stale or tampered with: a path outside the roots was never Elara's.
    if let Err(e) = bind_path::check(p, roots) {
        tracing::error!("a holder's recorded bind path is refused and left alone: {e}");
        return Ok(());
    }
    let id = match h.mount_id {
        Some(id) => Some(id),
        None => {
            let at_path = crate::attach::mountinfo::find(p).map_err(|e| ApiError::internal(e.to_string()))?;
            let volume_dev = match host {
                Some(h) => crate::attach::mountinfo::find(&h.mountpoint)
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map(|m| m.dev),
                None => None,
            };
            match at_path {
                Some(m) if Some(m.dev) == volume_dev => Some(m.id),
                Some(m) => {
                    tracing::warn!(path = %p.display(), "the mount there ({}) is not the volume's; left alone", m.source);
                    None
                }
                None => None,
            }
        }
    };
    match id {
        Some(id) => bind_path::unbind(p, id).map_err(path_error),
        None => Ok(()),
    }
}

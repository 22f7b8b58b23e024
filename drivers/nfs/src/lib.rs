//! # elara-driver-nfs: volumes as directories on an NFS export
//!
//! A file-kind driver. Each Elara volume is a directory on an NFS export, shared by every
//! container and node that mounts it. The driver manages the export **over the NFS protocol from
//! inside its sandbox** (NFSv3 and MOUNT over `wasi:sockets` TCP, by the `nfs3_client` crate): no
//! host mount is needed to create, delete, snapshot or measure volumes, and the backend reaches
//! only the server it was granted. See [`layout`] for what lives where on the export and how
//! every call stays idempotent and crash-safe, [`client`] for the protocol side.
//!
//! ```text
//! elara backend add nfs1 --driver nfs --config server=10.0.0.7 --config export=/srv/nfs \
//!     [--config path=elara] [--config version=3|4] [--config mount_port=20048] --allow-host 10.0.0.7
//! ```
//!
//! * create = MKDIR of `volumes/<id>` with the volume's mode and owner (backend config `mode`,
//!   `uid`, `gid`, or the volume labels of the same names); delete = remove the tree.
//! * `pools()` = the export's FSSTAT figures; stats = a walk of the volume's tree (bytes the
//!   server allocated, entries).
//! * Snapshots are a copy of the tree made by the driver on the server (READ/WRITE; NFSv3 has no
//!   server-side copy), keeping modes, owners, times and symbolic links, with progress reported
//!   to the host (the op's progress, the CLI's bar) and in the log; create-from-snapshot copies
//!   back. Hard links become separate files; device nodes,
//!   FIFOs and sockets are left out and counted in the snapshot's record.
//! * Quota and QoS: a generic NFS export can enforce neither. The size is recorded and reported;
//!   `info` says both are unsupported, so the host refuses `iops` on these volumes.
//! * `attach` returns an `nfs` connection (server, the volume's export path, version, options)
//!   that the host mounts with the kernel NFS client.
//! * The driver works as root (AUTH_UNIX uid 0): the export must not squash root.

pub mod client;
pub mod layout;
pub mod pipe;

use std::cell::RefCell;
use std::time::Duration;

use elara_driver_sdk::names::check_id;
use elara_driver_sdk::pool::{self, PoolSettings};
use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info};

use client::{Endpoint, NfsError, Owner, Session, Throttle};
use layout::{Kind, META, SnapshotRecord, VolumeRecord, join};
use nfs3_client::nfs3_types::nfs3::{nfs_fh3, nfsstat3};

/// The driver. `export_driver!` turns it into the component's exports.
pub struct NfsDriver;

#[cfg(target_arch = "wasm32")]
elara_driver_sdk::export_driver!(NfsDriver);

/// Settings from `configure`.
#[derive(Debug, Clone, PartialEq)]
pub struct NfsSettings {
    pub endpoint: Endpoint,
    /// Elara's directory in the export (`path`), relative to the export root.
    pub base: String,
    /// NFS version the host mounts with.
    pub version: String,
    /// Extra options for the host's mount, from `mount_options`.
    pub mount_options: Vec<(String, String)>,
    /// Mode and owner of new volume directories.
    pub owner: Owner,
    pub pool: PoolSettings,
}

static SETTINGS: Settings<NfsSettings> = Settings::new();

/// The configuration keys, shared by `info` and `configure`.
pub fn config_keys() -> Vec<ConfigKey> {
    let mut keys = vec![
        ConfigKey::required(
            "server",
            "NFS server HOST or HOST:PORT (PORT: the NFS port; without it the server's portmapper is asked). \
             Grant it with --allow-host HOST (portmapper, MOUNT and NFS ports), or HOST:PORT and HOST:<mount_port>",
        ),
        ConfigKey::required(
            "export",
            "the export's path as the server's MOUNT service knows it, e.g. /srv/nfs",
        ),
        ConfigKey::optional(
            "path",
            "directory inside the export for Elara's volumes, snapshots and records",
            Some(""),
        ),
        ConfigKey::optional(
            "version",
            "NFS version the host mounts volumes with: 3, 4, 4.1 or 4.2",
            Some("3"),
        ),
        ConfigKey::optional(
            "mount_port",
            "the MOUNT service's port; unset: asked of the portmapper (port 111)",
            None,
        ),
        ConfigKey::optional(
            "mount_options",
            "extra options for the host's mount, comma-separated (e.g. hard,timeo=600)",
            Some(""),
        ),
        ConfigKey::optional(
            "mode",
            "mode of new volume directories, octal (a volume's label `mode` overrides it)",
            Some("0755"),
        ),
        ConfigKey::optional(
            "uid",
            "owner of new volume directories (a volume's label `uid` overrides it)",
            Some("0"),
        ),
        ConfigKey::optional(
            "gid",
            "group of new volume directories (a volume's label `gid` overrides it)",
            Some("0"),
        ),
    ];
    keys.extend(pool::config_keys());
    keys
}

/// Parse and check the configuration pairs. No I/O: `pools` is the first call that reaches the
/// server.
pub fn parse_settings(pairs: Vec<(String, String)>) -> DriverResult<NfsSettings> {
    let cfg = Config::parse(pairs, &config_keys())?;
    let (host, port) = parse_server(cfg.required("server")?.trim())?;
    let export = cfg.required("export")?.trim().to_string();
    if !export.starts_with('/') || export.contains('\0') {
        return Err(DriverError::invalid(
            "export",
            format!("{export:?} is not an absolute path such as /srv/nfs"),
        ));
    }
    let base = cfg.get("path").unwrap_or_default().trim().trim_matches('/').to_string();
    if client::components(&base).any(|c| c == "..") || base.contains('\0') {
        return Err(DriverError::invalid(
            "path",
            format!("{base:?} must stay inside the export (no `..`)"),
        ));
    }
    let version = cfg.required("version")?.trim().to_string();
    if !["3", "4", "4.0", "4.1", "4.2"].contains(&version.as_str()) {
        return Err(DriverError::invalid(
            "version",
            format!("{version:?} is not 3, 4, 4.1 or 4.2"),
        ));
    }
    let mount_port = match cfg.u64("mount_port")? {
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => {
            return Err(DriverError::invalid(
                "mount_port",
                format!("{p} is not a port (1-65535)"),
            ));
        }
        None => None,
    };
    let mount_options = parse_mount_options(cfg.get("mount_options").unwrap_or_default())?;
    let owner = Owner {
        mode: parse_mode("mode", cfg.required("mode")?)?,
        uid: parse_id("uid", cfg.required("uid")?)?,
        gid: parse_id("gid", cfg.required("gid")?)?,
    };
    let pool = PoolSettings::parse(&cfg)?;
    Ok(NfsSettings {
        endpoint: Endpoint {
            host,
            port,
            mount_port,
            export,
        },
        base,
        version,
        mount_options,
        owner,
        pool,
    })
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn parse_server(text: &str) -> DriverResult<(String, Option<u16>)> {
    let bad = |why: &str| DriverError::invalid("server", format!("{text:?} {why}: use HOST or HOST:PORT"));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("has no closing `]`"))?;
        (h, after.strip_prefix(':'))
    } else if text.matches(':').count() == 1 {
        let (h, p) = text.split_once(':').unwrap_or((text, ""));
        (h, Some(p))
    } else {
        (text, None)
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad("is not a host name or address"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a bad port"))?,
        ),
    };
    Ok((host.to_string(), port))
}

fn parse_mount_options(text: &str) -> DriverResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for opt in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        if k.is_empty() || k.contains(char::is_whitespace) || v.contains(char::is_whitespace) {
            return Err(DriverError::invalid(
                "mount_options",
                format!("{opt:?} is not an option (name or name=value)"),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn parse_mode(field: &str, text: &str) -> DriverResult<u32> {
    u32::from_str_radix(text.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| DriverError::invalid(field, format!("{text:?} is not an octal mode such as 0755")))
}

fn parse_id(field: &str, text: &str) -> DriverResult<u32> {
    text.trim()
        .parse()
        .map_err(|_| DriverError::invalid(field, format!("{text:?} is not a numeric id")))
}

/// The mode and owner of a new volume: its labels `mode`, `uid`, `gid`, else the backend's.
fn owner_for(spec: &VolumeSpec, settings: &NfsSettings) -> DriverResult<Owner> {
    let label = |k: &str| spec.labels.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str());
    Ok(Owner {
        mode: label("mode")
            .map(|v| parse_mode("labels.mode", v))
            .transpose()?
            .unwrap_or(settings.owner.mode),
        uid: label("uid")
            .map(|v| parse_id("labels.uid", v))
            .transpose()?
            .unwrap_or(settings.owner.uid),
        gid: label("gid")
            .map(|v| parse_id("labels.gid", v))
            .transpose()?
            .unwrap_or(settings.owner.gid),
    })
}

fn features() -> Features {
    Features::SNAPSHOT | Features::CLONE | Features::RESIZE | Features::STATS
}

// ---------------------------------------------------------------------------------------------
// The connection: one NFS session per instance, kept between calls.

/// A session with the handles of the layout's directories.
struct Conn {
    session: Session,
    settings: NfsSettings,
    base: nfs_fh3,
    meta: nfs_fh3,
}

impl Conn {
    fn open(settings: &NfsSettings) -> Result<Conn, NfsError> {
        let mut session = Session::connect(&settings.endpoint)?;
        let base = session.mkdir_all(&session.root(), &settings.base)?;
        let meta = session.mkdir_all(&base, META)?;
        for kind in [Kind::Volume, Kind::Snapshot] {
            session.mkdir_all(&base, kind.trees())?;
            session.mkdir_all(&meta, kind.records())?;
        }
        debug!("connected to {} export {}", session.server, settings.endpoint.export);
        Ok(Conn {
            session,
            settings: settings.clone(),
            base,
            meta,
        })
    }

    /// The directory holding `kind`'s trees.
    fn trees(&mut self, kind: Kind) -> Result<nfs_fh3, NfsError> {
        let path = self.path(kind.trees());
        self.dir(&self.base.clone(), kind.trees(), &path)
    }

    /// The directory holding `kind`'s records.
    fn records(&mut self, kind: Kind) -> Result<nfs_fh3, NfsError> {
        let path = self.path(&join(META, kind.records()));
        self.dir(&self.meta.clone(), kind.records(), &path)
    }

    fn dir(&mut self, parent: &nfs_fh3, name: &str, path: &str) -> Result<nfs_fh3, NfsError> {
        match self.session.lookup(parent, name, path)? {
            Some((fh, _)) => Ok(fh),
            None => Err(NfsError::Protocol(format!(
                "{path} is missing on the server (removed behind Elara's back?)"
            ))),
        }
    }

    /// A path relative to the export root, for messages.
    fn path(&self, rel: &str) -> String {
        format!("/{}", join(&self.settings.base, rel))
    }

    fn read_record<T: serde::de::DeserializeOwned>(&mut self, kind: Kind, id: &str) -> Result<Option<T>, Fail> {
        let dir = self.records(kind)?;
        let name = Kind::record_name(id);
        let path = self.path(&join(META, &join(kind.records(), &name)));
        let Some((fh, _)) = self.session.lookup(&dir, &name, &path)? else {
            return Ok(None);
        };
        let bytes = self.session.read_all(&fh, &path)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Fail::Driver(DriverError::backend(format!("record {path} is corrupt: {e}"))))
    }

    fn write_record<T: serde::Serialize>(&mut self, kind: Kind, id: &str, record: &T) -> Result<(), Fail> {
        let dir = self.records(kind)?;
        let name = Kind::record_name(id);
        let path = self.path(&join(META, &join(kind.records(), &name)));
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| DriverError::backend(format!("encoding {path}: {e}")))?;
        Ok(self.session.write_file_atomic(&dir, &name, &bytes, &path)?)
    }

    fn list_records<T: serde::de::DeserializeOwned>(&mut self, kind: Kind) -> Result<Vec<T>, Fail> {
        let dir = self.records(kind)?;
        let path = self.path(&join(META, kind.records()));
        let mut out = Vec::new();
        for entry in self.session.list(&dir, &path)? {
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            if let Some(id) = Kind::id_of_record(&name) {
                // Removed since the listing: skip.
                if let Some(record) = self.read_record(kind, id)? {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// Remove `kind`'s tree `id`, then its record (the order that keeps a record the commit point).
    fn remove(&mut self, kind: Kind, id: &str) -> Result<(), Fail> {
        let trees = self.trees(kind)?;
        let path = self.path(&join(kind.trees(), id));
        self.session.remove_tree(&trees, id, &path)?;
        let records = self.records(kind)?;
        let name = Kind::record_name(id);
        let path = self.path(&join(META, &join(kind.records(), &name)));
        self.session.remove(&records, &name, &path)?;
        Ok(())
    }

    /// Copy the tree `from` (a volume or snapshot) into `to_kind`'s new tree `to_id`, replacing
    /// debris of an interrupted attempt, logging progress.
    fn copy(&mut self, from_kind: Kind, from_id: &str, to_kind: Kind, to_id: &str) -> Result<client::CopyStats, Fail> {
        let (src_trees, dst_trees) = (self.trees(from_kind)?, self.trees(to_kind)?);
        let src_path = self.path(&join(from_kind.trees(), from_id));
        let dst_path = self.path(&join(to_kind.trees(), to_id));
        let Some((src, _)) = self.session.lookup(&src_trees, from_id, &src_path)? else {
            return Err(Fail::Driver(DriverError::backend(format!(
                "{} {from_id} has a record but no directory {src_path}",
                from_kind.what()
            ))));
        };
        self.session.remove_tree(&dst_trees, to_id, &dst_path)?;
        let total = self.session.usage(&src, &src_path)?.size_bytes;
        info!("copying {src_path} to {dst_path}: {} MiB", total >> 20);
        let mut throttle = Throttle::new(Duration::from_secs(2));
        let mut progress = |done: u64| {
            elara_driver_sdk::log::progress(done, total);
            if let Some(elapsed) = throttle.due() {
                let rate = done as f64 / elapsed.as_secs_f64().max(0.001) / 1048576.0;
                let pct = if total == 0 {
                    100.0
                } else {
                    done as f64 * 100.0 / total as f64
                };
                info!(
                    "copying {src_path} to {dst_path}: {} of {} MiB ({pct:.0}%), {rate:.1} MiB/s",
                    done >> 20,
                    total >> 20
                );
            }
        };
        let stats = self
            .session
            .copy_tree(&src, &dst_trees, to_id, &dst_path, &mut progress)?;
        info!(
            "copied {src_path} to {dst_path}: {} entries, {} bytes{}",
            stats.entries,
            stats.bytes,
            if stats.skipped > 0 {
                format!(", {} device nodes/FIFOs/sockets left out", stats.skipped)
            } else {
                String::new()
            }
        );
        Ok(stats)
    }
}

/// A call's failure: from the server (which may be retried on a new connection) or the driver's own.
enum Fail {
    Nfs(NfsError),
    Driver(DriverError),
}

impl From<NfsError> for Fail {
    fn from(e: NfsError) -> Self {
        Fail::Nfs(e)
    }
}

impl From<DriverError> for Fail {
    fn from(e: DriverError) -> Self {
        Fail::Driver(e)
    }
}

/// The contract's error for a server's answer.
fn driver_error(server: &str, e: NfsError) -> DriverError {
    match e.nfs_status() {
        Some(nfsstat3::NFS3ERR_NOENT) => DriverError::not_found(e.to_string()),
        Some(nfsstat3::NFS3ERR_EXIST) => DriverError::already_exists(e.to_string()),
        Some(nfsstat3::NFS3ERR_JUKEBOX) => DriverError::unavailable(format!("NFS server {server} is busy: {e}")),
        Some(_) => DriverError::backend(format!("NFS server {server}: {e}")),
        None if e.is_transport() => DriverError::unavailable(format!("NFS server {server}: {e}")),
        None => DriverError::backend(format!("NFS server {server}: {e}")),
    }
}

thread_local! {
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
}

/// Run `op` on this instance's connection, opening one if needed. A connection kept from an
/// earlier call may have died with a server restart: on a transport error it is replaced and
/// `op` run once more (every call is idempotent; see [`layout`]).
fn with_conn<T>(mut op: impl FnMut(&mut Conn) -> Result<T, Fail>) -> DriverResult<T> {
    let settings = SETTINGS.get()?;
    let server = match settings.endpoint.port {
        Some(p) => format!("{}:{p}", settings.endpoint.host),
        None => settings.endpoint.host.clone(),
    };
    CONN.with_borrow_mut(|slot| {
        if slot.as_ref().is_some_and(|c| c.settings != *settings) {
            *slot = None;
        }
        let mut reused = slot.is_some();
        loop {
            let conn = match slot {
                Some(c) => c,
                None => slot.insert(Conn::open(&settings).map_err(|e| driver_error(&server, e))?),
            };
            match op(conn) {
                Ok(v) => return Ok(v),
                Err(Fail::Driver(e)) => return Err(e),
                Err(Fail::Nfs(e)) if e.is_transport() => {
                    *slot = None;
                    if reused {
                        debug!("NFS connection lost ({e}); retrying on a new one");
                        reused = false;
                        continue;
                    }
                    return Err(driver_error(&server, e));
                }
                Err(Fail::Nfs(e)) => return Err(driver_error(&server, e)),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------

fn to_volume(r: &VolumeRecord) -> Volume {
    Volume {
        id: r.id.clone(),
        pool: r.pool.clone(),
        size_bytes: r.size_bytes,
        backend_ref: join(layout::VOLUMES, &r.id),
    }
}

fn to_snapshot(r: &SnapshotRecord) -> Snapshot {
    Snapshot {
        id: r.id.clone(),
        volume_id: r.volume_id.clone(),
        size_bytes: r.size_bytes,
        backend_ref: join(layout::SNAPSHOTS, &r.id),
    }
}

const QOS_UNSUPPORTED: &str = "qos: a generic NFS export cannot enforce IOPS or bandwidth limits";

/// The existing record for `spec.id`, if it matches the spec (a retried create), or
/// `already-exists` if it does not.
fn existing_volume(conn: &mut Conn, spec: &VolumeSpec, from: Option<&str>) -> Result<Option<Volume>, Fail> {
    let Some(record) = conn.read_record::<VolumeRecord>(Kind::Volume, &spec.id)? else {
        return Ok(None);
    };
    elara_driver_sdk::idempotency::check_same_volume(
        &spec.id,
        record.size_bytes,
        record.created_from.as_deref(),
        spec.size_bytes,
        from,
    )?;
    Ok(Some(to_volume(&record)))
}

fn volume_record(conn: &mut Conn, id: &str) -> Result<VolumeRecord, Fail> {
    conn.read_record(Kind::Volume, id)?
        .ok_or_else(|| Fail::Driver(DriverError::not_found(format!("volume {id}"))))
}

impl Guest for NfsDriver {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "nfs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: VolumeKind::File,
            features: features(),
            config_keys: config_keys(),
            notes: vec![
                ("scope".into(), "cluster".into()),
                ("layout".into(), "a directory per volume: <export>/<path>/volumes/<id>; records in <path>/.elara".into()),
                ("management".into(), "NFSv3 + MOUNT over TCP from the sandbox; no host mount".into()),
                (
                    "snapshot-method".into(),
                    "a copy of the tree on the server, made by the driver (READ/WRITE; NFSv3 has no server-side copy): \
                     its time grows with the data; it reports progress, so the call's limits bound a stall, not its length"
                        .into(),
                ),
                ("quota".into(), "not supported: the size is recorded and reported, not enforced by NFS".into()),
                ("qos".into(), "not supported: a generic NFS export cannot enforce IOPS or bandwidth limits".into()),
                ("mount".into(), "the host's kernel NFS client (mount -t nfs)".into()),
            ],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        elara_driver_sdk::log::install_panic_hook();
        let settings = parse_settings(config)?;
        debug!(
            "configured: {}:{} path {:?}",
            settings.endpoint.host, settings.endpoint.export, settings.base
        );
        SETTINGS.set(settings);
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        let settings = SETTINGS.get()?;
        with_conn(|conn| {
            let fs = conn.session.fsstat()?;
            let provisioned = conn
                .list_records::<VolumeRecord>(Kind::Volume)?
                .iter()
                .map(|v| v.size_bytes)
                .sum();
            Ok(vec![Pool {
                name: settings.pool.name.clone(),
                total: Capacity::Bytes(fs.tbytes),
                free: Capacity::Bytes(fs.abytes),
                provisioned_bytes: provisioned,
                reserved_percentage: settings.pool.reserved_percentage,
                thin_provisioning: true,
                thick_provisioning: false,
                max_over_subscription_ratio: settings.pool.max_over_subscription_ratio.clone(),
                capabilities: vec![
                    ("type".into(), "file".into()),
                    ("driver".into(), "nfs".into()),
                    ("server".into(), settings.endpoint.host.clone()),
                    ("export".into(), settings.endpoint.export.clone()),
                    ("shared".into(), "true".into()),
                ],
            }])
        })
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        with_conn(|conn| {
            Ok(conn
                .list_records::<VolumeRecord>(Kind::Volume)?
                .iter()
                .map(to_volume)
                .collect())
        })
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        settings.pool.check_spec(&spec, QOS_UNSUPPORTED)?;
        let owner = owner_for(&spec, &settings)?;
        let volume = with_conn(|conn| {
            if let Some(volume) = existing_volume(conn, &spec, None)? {
                return Ok(volume);
            }
            // No record: a directory under this id is debris of an interrupted attempt.
            let trees = conn.trees(Kind::Volume)?;
            let path = conn.path(&join(layout::VOLUMES, &spec.id));
            conn.session.remove_tree(&trees, &spec.id, &path)?;
            conn.session.mkdir(&trees, &spec.id, owner, &path)?;
            let record = VolumeRecord {
                id: spec.id.clone(),
                name: spec.name.clone(),
                size_bytes: spec.size_bytes,
                pool: spec.pool.clone(),
                labels: spec.labels.clone(),
                created_from: None,
                mode: owner.mode,
                uid: owner.uid,
                gid: owner.gid,
            };
            conn.write_record(Kind::Volume, &spec.id, &record)?;
            Ok(to_volume(&record))
        })?;
        info!("created volume {} ({} bytes)", spec.id, spec.size_bytes);
        Ok(volume)
    }

    fn create_from_snapshot(spec: VolumeSpec, snapshot_id: String) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        settings.pool.check_spec(&spec, QOS_UNSUPPORTED)?;
        check_id("snapshot-id", &snapshot_id)?;
        let volume = with_conn(|conn| {
            if let Some(volume) = existing_volume(conn, &spec, Some(&snapshot_id))? {
                return Ok(volume);
            }
            let snapshot = conn
                .read_record::<SnapshotRecord>(Kind::Snapshot, &snapshot_id)?
                .ok_or_else(|| DriverError::not_found(format!("snapshot {snapshot_id}")))?;
            if spec.size_bytes < snapshot.size_bytes {
                return Err(Fail::Driver(DriverError::invalid(
                    "size",
                    format!(
                        "{} bytes is smaller than snapshot {snapshot_id} ({} bytes)",
                        spec.size_bytes, snapshot.size_bytes
                    ),
                )));
            }
            conn.copy(Kind::Snapshot, &snapshot_id, Kind::Volume, &spec.id)?;
            // The copy keeps the snapshot's mode and owner: record those.
            let trees = conn.trees(Kind::Volume)?;
            let path = conn.path(&join(layout::VOLUMES, &spec.id));
            let (_, attr) = conn
                .session
                .lookup(&trees, &spec.id, &path)?
                .ok_or_else(|| DriverError::backend(format!("{path} vanished right after the copy")))?;
            let record = VolumeRecord {
                id: spec.id.clone(),
                name: spec.name.clone(),
                size_bytes: spec.size_bytes,
                pool: spec.pool.clone(),
                labels: spec.labels.clone(),
                created_from: Some(snapshot_id.clone()),
                mode: attr.mode & 0o7777,
                uid: attr.uid,
                gid: attr.gid,
            };
            conn.write_record(Kind::Volume, &spec.id, &record)?;
            Ok(to_volume(&record))
        })?;
        info!("created volume {} from snapshot {snapshot_id}", spec.id);
        Ok(volume)
    }

    fn delete(volume_id: String) -> DriverResult<()> {
        check_id("volume-id", &volume_id)?;
        with_conn(|conn| conn.remove(Kind::Volume, &volume_id))?;
        info!("deleted volume {volume_id}");
        Ok(())
    }

    fn resize(volume_id: String, size_bytes: u64) -> DriverResult<Volume> {
        check_id("volume-id", &volume_id)?;
        with_conn(|conn| {
            let mut record = volume_record(conn, &volume_id)?;
            if pool::check_grow(record.size_bytes, size_bytes)? {
                record.size_bytes = size_bytes;
                conn.write_record(Kind::Volume, &volume_id, &record)?;
                info!("resized volume {volume_id} to {size_bytes} bytes (recorded; NFS does not enforce it)");
            }
            Ok(to_volume(&record))
        })
    }

    fn snapshot_create(spec: SnapshotSpec) -> DriverResult<Snapshot> {
        check_id("id", &spec.id)?;
        check_id("volume-id", &spec.volume_id)?;
        with_conn(|conn| {
            if let Some(existing) = conn.read_record::<SnapshotRecord>(Kind::Snapshot, &spec.id)? {
                if existing.volume_id != spec.volume_id {
                    return Err(Fail::Driver(DriverError::already_exists(format!(
                        "snapshot {} exists for volume {}, not {}",
                        spec.id, existing.volume_id, spec.volume_id
                    ))));
                }
                return Ok(to_snapshot(&existing));
            }
            let volume = volume_record(conn, &spec.volume_id)?;
            let stats = conn.copy(Kind::Volume, &spec.volume_id, Kind::Snapshot, &spec.id)?;
            let record = SnapshotRecord {
                id: spec.id.clone(),
                volume_id: spec.volume_id.clone(),
                name: spec.name.clone(),
                size_bytes: volume.size_bytes,
                entries: stats.entries,
                bytes: stats.bytes,
                skipped: stats.skipped,
            };
            conn.write_record(Kind::Snapshot, &spec.id, &record)?;
            info!(
                "snapshot {} of volume {}: {} entries, {} bytes",
                spec.id, spec.volume_id, stats.entries, stats.bytes
            );
            Ok(to_snapshot(&record))
        })
    }

    fn snapshot_delete(snapshot_id: String) -> DriverResult<()> {
        check_id("snapshot-id", &snapshot_id)?;
        with_conn(|conn| conn.remove(Kind::Snapshot, &snapshot_id))?;
        info!("deleted snapshot {snapshot_id}");
        Ok(())
    }

    fn attach(volume_id: String, _node: NodeInfo) -> DriverResult<Connection> {
        check_id("volume-id", &volume_id)?;
        let settings = SETTINGS.get()?;
        with_conn(|conn| {
            volume_record(conn, &volume_id)?;
            let trees = conn.trees(Kind::Volume)?;
            let path = conn.path(&join(layout::VOLUMES, &volume_id));
            if conn.session.lookup(&trees, &volume_id, &path)?.is_none() {
                return Err(Fail::Driver(DriverError::backend(format!(
                    "volume {volume_id} has a record but no directory {path}"
                ))));
            }
            Ok(())
        })?;
        let mut options = settings.mount_options.clone();
        if let Some(p) = settings.endpoint.mount_port.filter(|_| settings.version == "3") {
            options.push(("mountport".into(), p.to_string()));
        }
        let export = format!(
            "/{}",
            join(
                &settings.endpoint.export,
                &join(&settings.base, &join(layout::VOLUMES, &volume_id))
            )
        );
        Ok(Connection::Nfs(NfsConnection {
            server: settings.endpoint.host.clone(),
            port: settings.endpoint.port,
            export,
            version: settings.version.clone(),
            options,
        }))
    }

    fn detach(volume_id: String, _node: NodeInfo) -> DriverResult<()> {
        // The host unmounts; nothing is held on the server for a mount.
        SETTINGS.get()?;
        check_id("volume-id", &volume_id)
    }

    fn stats(volume_id: String) -> DriverResult<VolumeStats> {
        check_id("volume-id", &volume_id)?;
        with_conn(|conn| {
            let record = volume_record(conn, &volume_id)?;
            let trees = conn.trees(Kind::Volume)?;
            let path = conn.path(&join(layout::VOLUMES, &volume_id));
            let (fh, _) = conn.session.lookup(&trees, &volume_id, &path)?.ok_or_else(|| {
                DriverError::backend(format!("volume {volume_id} has a record but no directory {path}"))
            })?;
            let usage = conn.session.usage(&fh, &path)?;
            Ok(VolumeStats {
                size_bytes: record.size_bytes,
                used_bytes: usage.used_bytes,
                objects: Some(usage.entries),
            })
        })
    }

    fn set_qos(_volume_id: String, _qos: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported(QOS_UNSUPPORTED))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn field(e: DriverError) -> String {
        match e {
            DriverError::Invalid(f) => f.field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn settings_parse() {
        let s = parse_settings(pairs(&[
            ("server", "10.0.0.7:2049"),
            ("export", "/srv/nfs"),
            ("path", "/elara/"),
            ("mount_port", "20048"),
            ("mount_options", "hard, timeo=600"),
        ]))
        .unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint {
                host: "10.0.0.7".into(),
                port: Some(2049),
                mount_port: Some(20048),
                export: "/srv/nfs".into()
            }
        );
        assert_eq!(s.base, "elara");
        assert_eq!(s.version, "3");
        assert_eq!(
            s.mount_options,
            vec![("hard".into(), "".into()), ("timeo".into(), "600".into())]
        );
        assert_eq!(
            s.owner,
            Owner {
                mode: 0o755,
                uid: 0,
                gid: 0
            }
        );
        let v6 = parse_settings(pairs(&[("server", "[fd00::7]:2050"), ("export", "/x")])).unwrap();
        assert_eq!((v6.endpoint.host.as_str(), v6.endpoint.port), ("fd00::7", Some(2050)));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let base = [("server", "nfs1"), ("export", "/srv")];
        for (key, value) in [
            ("server", "nfs1:0"),
            ("server", "a/b"),
            ("export", "srv"),
            ("path", "../up"),
            ("version", "2"),
            ("mount_port", "70000"),
            ("mode", "0999"),
            ("uid", "root"),
            ("mount_options", "a b"),
            ("reserved_percentage", "101"),
            ("max_over_subscription_ratio", "0.5"),
        ] {
            let mut kv: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != key).collect();
            kv.push((key, value));
            assert_eq!(field(parse_settings(pairs(&kv)).unwrap_err()), key, "{key}={value}");
        }
    }

    #[test]
    fn labels_override_the_owner() {
        let s = parse_settings(pairs(&[("server", "h"), ("export", "/e"), ("mode", "0700")])).unwrap();
        let mut spec = VolumeSpec {
            id: "v".into(),
            name: "v".into(),
            size_bytes: 1,
            pool: "default".into(),
            labels: vec![("uid".into(), "1000".into())],
            qos: None,
        };
        assert_eq!(
            owner_for(&spec, &s).unwrap(),
            Owner {
                mode: 0o700,
                uid: 1000,
                gid: 0
            }
        );
        spec.labels.push(("mode".into(), "rwx".into()));
        assert_eq!(field(owner_for(&spec, &s).unwrap_err()), "labels.mode");
    }
}

//! # elara-driver-s3: volumes in an S3 object store, mounted with s3fs
//!
//! An object-kind driver. Each Elara volume is an S3 **bucket** (`<bucket_prefix>v-<id>`) or, when
//! the backend names one `bucket`, a **key prefix** in it (`<prefix>volumes/<id>/`); see [`store`]
//! for the layout and how every call stays idempotent on Elara's ids. `attach` returns an `s3`
//! connection that the host mounts with s3fs-fuse.
//!
//! ```text
//! elara backend add s3a --driver s3 --config endpoint=http://10.0.0.5:7480 --config region=us-east-1 \
//!     --config access_key=AK --config secret_key=SK [--config bucket=B] --allow-host 10.0.0.5:7480
//! ```
//!
//! * Requests are signed with AWS SigV4 by `aws-sigv4` and sent over `wasi:http`; the sandbox lets
//!   them reach only the granted endpoint.
//! * Snapshots are a server-side CopyObject of every object into the snapshot's bucket or prefix
//!   (no data passes through the driver); create-from-snapshot copies back.
//! * The size is a **soft quota**: recorded, reported by `stats` and `inspect`, and not enforced
//!   by S3. `resize` changes the record.
//! * `pools()` reports one pool whose capacity is `unknown` (S3 does not say), unless the operator
//!   configures `capacity`.
//! * Errors: bad credentials (`InvalidAccessKeyId`, `SignatureDoesNotMatch`) and bucket names S3
//!   refuses (`InvalidBucketName`) are `invalid` naming the config key; an endpoint that cannot
//!   be reached is `unavailable`.

pub mod s3;
pub mod store;

use elara_driver_sdk::prelude::*;
use elara_driver_sdk::{debug, info};

use s3::S3;
use store::{Kind, Layout, Record, copy_all, err, usage};

/// The driver. `export_driver!` turns it into the component's exports.
pub struct S3Driver;

#[cfg(target_arch = "wasm32")]
elara_driver_sdk::export_driver!(S3Driver);

/// Settings from `configure`.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub path_style: bool,
    pub layout: Layout,
    pub pool: String,
    /// Capacity to report, if the operator set one.
    pub capacity: Option<u64>,
    /// Server-side copies in flight during snapshots and clones.
    pub copy_concurrency: usize,
    /// Objects above this size are copied in parts of it.
    pub copy_part_size: u64,
}

impl S3Settings {
    fn client(&self) -> S3 {
        let bucket_field = match self.layout {
            Layout::Buckets { .. } => "bucket_prefix",
            Layout::Prefix { .. } => "bucket",
        };
        S3::new(
            &self.endpoint,
            &self.region,
            &self.access_key,
            &self.secret_key,
            self.path_style,
            bucket_field,
        )
        .with_copy_part_size(self.copy_part_size)
    }
}

static SETTINGS: Settings<S3Settings> = Settings::new();

/// The longest `bucket_prefix`: room for `v-` and a 36-character UUID in 63.
const MAX_BUCKET_PREFIX: usize = 63 - 2 - 36;

/// The configuration keys, shared by `info` and `configure`.
pub fn config_keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::required(
            "endpoint",
            "S3 endpoint URL, e.g. http://10.0.0.5:7480 (grant its host:port to the backend with --allow-host)",
        ),
        ConfigKey::optional("region", "S3 region used in request signatures", Some("us-east-1")),
        ConfigKey::required("access_key", "S3 access key id").secret(),
        ConfigKey::required("secret_key", "S3 secret access key").secret(),
        ConfigKey::optional(
            "bucket",
            "one bucket for every volume, a key prefix per volume; unset: a bucket per volume",
            None,
        ),
        ConfigKey::optional(
            "bucket_prefix",
            "start of bucket names when each volume is a bucket: <bucket_prefix>v-<volume id>, <bucket_prefix>s-<snapshot id>",
            Some("elara-"),
        ),
        ConfigKey::optional(
            "prefix",
            "key prefix inside `bucket`: volumes under <prefix>volumes/<id>/, snapshots under <prefix>snapshots/<id>/",
            Some("elara/"),
        ),
        ConfigKey::optional(
            "path_style",
            "path-style requests (http://host/bucket/key) rather than virtual-hosted (http://bucket.host/key)",
            Some("true"),
        ),
        ConfigKey::optional("pool", "name of the pool this backend reports", Some("default")),
        ConfigKey::optional(
            "capacity",
            "capacity to report to the scheduler, e.g. 10T; unset: unknown (S3 reports none)",
            None,
        ),
        ConfigKey::optional(
            "copy_concurrency",
            "server-side copies in flight while taking or restoring a snapshot, 1-64",
            Some("16"),
        ),
        ConfigKey::optional(
            "copy_part_size",
            "objects larger than this are copied server-side in parts of this size (UploadPartCopy), 5M-5G",
            Some("5G"),
        ),
    ]
}

/// Parse and check the configuration pairs. No I/O: reachability and credentials are checked by
/// `pools`, bucket names by S3 itself when a bucket is first made.
pub fn parse_settings(pairs: Vec<(String, String)>) -> DriverResult<S3Settings> {
    let cfg = Config::parse(pairs, &config_keys())?;
    let endpoint = cfg.required("endpoint")?.trim().trim_end_matches('/').to_string();
    check_endpoint(&endpoint)?;
    let region = cfg.required("region")?.trim().to_string();
    if region.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(DriverError::invalid(
            "region",
            format!("{region:?} is not a region name (e.g. us-east-1)"),
        ));
    }
    let access_key = cfg.required("access_key")?.trim().to_string();
    if access_key.contains(':') || access_key.chars().any(char::is_whitespace) {
        return Err(DriverError::invalid("access_key", "must not contain `:` or whitespace"));
    }
    let secret_key = cfg.required("secret_key")?.trim().to_string();
    if secret_key.contains(['\n', '\r']) {
        return Err(DriverError::invalid("secret_key", "must be a single line"));
    }
    let layout = match cfg.get("bucket").map(str::trim) {
        Some("") => {
            return Err(DriverError::invalid(
                "bucket",
                "must not be empty (leave it out for a bucket per volume)",
            ));
        }
        Some(bucket) => {
            check_bucket_text("bucket", bucket)?;
            let mut prefix = cfg
                .get("prefix")
                .unwrap_or_default()
                .trim()
                .trim_start_matches('/')
                .to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            if prefix.contains("//") || prefix.len() > 512 {
                return Err(DriverError::invalid(
                    "prefix",
                    format!("{prefix:?} must be a key prefix such as elara/ (no empty segments, at most 512 bytes)"),
                ));
            }
            Layout::Prefix {
                bucket: bucket.to_string(),
                prefix,
            }
        }
        None => {
            let name_prefix = cfg.required("bucket_prefix")?.trim().to_string();
            check_bucket_text("bucket_prefix", &name_prefix)?;
            if name_prefix.len() > MAX_BUCKET_PREFIX {
                return Err(DriverError::invalid(
                    "bucket_prefix",
                    format!(
                        "{name_prefix:?} is {} characters; at most {MAX_BUCKET_PREFIX} leave room for a volume id in S3's 63",
                        name_prefix.len()
                    ),
                ));
            }
            Layout::Buckets { name_prefix }
        }
    };
    let path_style = cfg.bool("path_style")?.unwrap_or(true);
    let pool = cfg.required("pool")?.trim().to_string();
    if !pool.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(DriverError::invalid(
            "pool",
            format!("{pool:?} may hold only letters, digits, `_`, `.` and `-`"),
        ));
    }
    let capacity = cfg.size("capacity")?;
    if capacity == Some(0) {
        return Err(DriverError::invalid(
            "capacity",
            "must be greater than 0 (leave it out for unknown)",
        ));
    }
    let copy_concurrency = cfg.u64("copy_concurrency")?.unwrap_or(16);
    if !(1..=64).contains(&copy_concurrency) {
        return Err(DriverError::invalid(
            "copy_concurrency",
            format!("{copy_concurrency} is not between 1 and 64"),
        ));
    }
    let copy_part_size = cfg.size("copy_part_size")?.unwrap_or(s3::MAX_COPY_PART);
    if !(s3::MIN_COPY_PART..=s3::MAX_COPY_PART).contains(&copy_part_size) {
        return Err(DriverError::invalid(
            "copy_part_size",
            format!("{copy_part_size} bytes is outside S3's part sizes, 5 MiB to 5 GiB"),
        ));
    }
    Ok(S3Settings {
        endpoint,
        region,
        access_key,
        secret_key,
        path_style,
        layout,
        pool,
        capacity,
        copy_concurrency: copy_concurrency as usize,
        copy_part_size,
    })
}

fn check_endpoint(endpoint: &str) -> DriverResult<()> {
    let bad = |why: &str| {
        DriverError::invalid(
            "endpoint",
            format!("{endpoint:?} {why}; expected e.g. http://10.0.0.5:7480"),
        )
    };
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| bad("is not an http:// or https:// URL"))?;
    if rest.is_empty() {
        return Err(bad("has no host"));
    }
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
        return Err(bad("must be scheme://host[:port] only, without a path, query or user"));
    }
    Ok(())
}

/// What the driver itself can tell about a bucket name: it must fit in a URL path segment. The
/// rest (length, case, characters) is S3's to judge, and its refusal is reported naming `field`.
fn check_bucket_text(field: &str, name: &str) -> DriverResult<()> {
    if name.contains(['/', ':', '?', '#', '%']) || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DriverError::invalid(
            field,
            format!("{name:?} cannot be part of a bucket name (no `/`, `:`, `?`, `#`, `%` or spaces)"),
        ));
    }
    Ok(())
}

/// Elara's ids name buckets and keys: lower-case letters, digits and `-`, within the layout's length.
fn check_id(field: &str, id: &str, layout: &Layout) -> DriverResult<()> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(DriverError::invalid(
            field,
            format!("{id:?} must be lower-case letters, digits and `-` (it names an S3 bucket or key)"),
        ));
    }
    if id.len() > layout.max_id_len() {
        return Err(DriverError::invalid(
            field,
            format!(
                "{id:?} is longer than {} characters, the most this backend's bucket names allow",
                layout.max_id_len()
            ),
        ));
    }
    Ok(())
}

fn features() -> Features {
    Features::SNAPSHOT | Features::CLONE | Features::RESIZE | Features::STATS
}

fn to_volume(settings: &S3Settings, r: &Record) -> Volume {
    Volume {
        id: r.id.clone(),
        pool: if r.pool.is_empty() {
            settings.pool.clone()
        } else {
            r.pool.clone()
        },
        size_bytes: r.size_bytes,
        backend_ref: settings.layout.place(Kind::Volume, &r.id).uri(),
    }
}

fn to_snapshot(settings: &S3Settings, r: &Record) -> Snapshot {
    Snapshot {
        id: r.id.clone(),
        volume_id: r.volume_id.clone().unwrap_or_default(),
        size_bytes: r.size_bytes,
        backend_ref: settings.layout.place(Kind::Snapshot, &r.id).uri(),
    }
}

/// Validate what every create shares: the id, a size > 0, our pool, no QoS limits.
fn check_spec(spec: &VolumeSpec, settings: &S3Settings) -> DriverResult<()> {
    check_id("id", &spec.id, &settings.layout)?;
    if spec.size_bytes == 0 {
        return Err(DriverError::invalid(
            "size",
            "must be greater than 0 bytes (it is the volume's soft quota)",
        ));
    }
    if spec.pool != settings.pool {
        return Err(DriverError::invalid(
            "pool",
            format!(
                "unknown pool {:?}: this backend has the pool {:?}",
                spec.pool, settings.pool
            ),
        ));
    }
    if let Some(qos) = &spec.qos
        && (qos.iops.is_some() || qos.bandwidth_bytes_per_sec.is_some())
    {
        return Err(DriverError::unsupported(
            "qos: S3 volumes cannot enforce IOPS or bandwidth limits",
        ));
    }
    Ok(())
}

/// The existing volume for `spec.id`, if its record matches the spec (an idempotent retry), or
/// `already-exists` if it does not.
fn existing_volume(
    s3: &S3,
    settings: &S3Settings,
    spec: &VolumeSpec,
    from: Option<&str>,
) -> DriverResult<Option<Volume>> {
    let Some(record) = settings.layout.read(s3, Kind::Volume, &spec.id)? else {
        return Ok(None);
    };
    elara_driver_sdk::idempotency::check_same_volume(
        &spec.id,
        record.size_bytes,
        record.from.as_deref(),
        spec.size_bytes,
        from,
    )?;
    Ok(Some(to_volume(settings, &record)))
}

fn volume_record(s3: &S3, settings: &S3Settings, id: &str) -> DriverResult<Record> {
    check_id("volume-id", id, &settings.layout)?;
    settings
        .layout
        .read(s3, Kind::Volume, id)?
        .ok_or_else(|| DriverError::not_found(format!("volume {id}")))
}

fn new_volume_record(spec: &VolumeSpec, from: Option<&str>) -> Record {
    Record {
        kind: Kind::Volume,
        id: spec.id.clone(),
        name: spec.name.clone(),
        size_bytes: spec.size_bytes,
        pool: spec.pool.clone(),
        from: from.map(str::to_string),
        volume_id: None,
    }
}

impl Guest for S3Driver {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "s3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: VolumeKind::Object,
            features: features(),
            config_keys: config_keys(),
            notes: vec![
                (
                    "layout".into(),
                    "a bucket per volume (<bucket_prefix>v-<id>), or a key prefix per volume in one `bucket`".into(),
                ),
                (
                    "quota".into(),
                    "soft: the size is recorded and reported, not enforced by S3".into(),
                ),
                (
                    "snapshot-method".into(),
                    "server-side CopyObject of every object".into(),
                ),
                (
                    "mount".into(),
                    "s3fs-fuse, path-style requests, credentials in a 0600 file".into(),
                ),
                (
                    "capacity".into(),
                    "unknown unless `capacity` is configured (S3 reports none)".into(),
                ),
                ("qos".into(), "not supported".into()),
            ],
        }
    }

    fn configure(config: Vec<(String, String)>) -> DriverResult<()> {
        elara_driver_sdk::log::install_panic_hook();
        let settings = parse_settings(config)?;
        debug!(
            "configured: endpoint {}, layout {:?}",
            settings.endpoint, settings.layout
        );
        SETTINGS.set(settings);
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        let settings = SETTINGS.get()?;
        let s3 = settings.client();
        // Listing the volumes is the reachability and credentials check, and gives the sum of
        // their (soft) sizes.
        let provisioned = settings
            .layout
            .list(&s3, Kind::Volume)?
            .iter()
            .map(|r| r.size_bytes)
            .sum();
        let (total, free) = match settings.capacity {
            Some(c) => (Capacity::Bytes(c), Capacity::Bytes(c.saturating_sub(provisioned))),
            None => (Capacity::Unknown, Capacity::Unknown),
        };
        let layout = match &settings.layout {
            Layout::Buckets { .. } => "bucket-per-volume",
            Layout::Prefix { .. } => "prefix-per-volume",
        };
        Ok(vec![Pool {
            name: settings.pool.clone(),
            total,
            free,
            provisioned_bytes: provisioned,
            reserved_percentage: 0,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: "1.0".into(),
            capabilities: vec![
                ("type".into(), "object".into()),
                ("driver".into(), "s3".into()),
                ("layout".into(), layout.into()),
                ("region".into(), settings.region.clone()),
                ("snapshot-method".into(), "server-side-copy".into()),
                ("quota".into(), "soft".into()),
            ],
        }])
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        let settings = SETTINGS.get()?;
        let s3 = settings.client();
        Ok(settings
            .layout
            .list(&s3, Kind::Volume)?
            .iter()
            .map(|r| to_volume(&settings, r))
            .collect())
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        check_spec(&spec, &settings)?;
        let s3 = settings.client();
        if let Some(volume) = existing_volume(&s3, &settings, &spec, None)? {
            return Ok(volume);
        }
        let place = settings.layout.place(Kind::Volume, &spec.id);
        settings.layout.prepare(&s3, &place)?;
        let record = new_volume_record(&spec, None);
        settings.layout.write(&s3, &record)?;
        info!(
            "created volume {} at {} (soft quota {} bytes)",
            spec.id,
            place.uri(),
            spec.size_bytes
        );
        Ok(to_volume(&settings, &record))
    }

    fn create_from_snapshot(spec: VolumeSpec, snapshot_id: String) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        check_spec(&spec, &settings)?;
        check_id("snapshot-id", &snapshot_id, &settings.layout)?;
        let s3 = settings.client();
        if let Some(volume) = existing_volume(&s3, &settings, &spec, Some(&snapshot_id))? {
            return Ok(volume);
        }
        let snapshot = settings
            .layout
            .read(&s3, Kind::Snapshot, &snapshot_id)?
            .ok_or_else(|| DriverError::not_found(format!("snapshot {snapshot_id}")))?;
        if spec.size_bytes < snapshot.size_bytes {
            return Err(DriverError::invalid(
                "size",
                format!(
                    "{} bytes is smaller than snapshot {snapshot_id} ({} bytes)",
                    spec.size_bytes, snapshot.size_bytes
                ),
            ));
        }
        let place = settings.layout.place(Kind::Volume, &spec.id);
        let label = format!("volume {} from snapshot {snapshot_id}", spec.id);
        settings.layout.prepare(&s3, &place)?;
        // No record: whatever an earlier attempt copied is incomplete; start over.
        settings.layout.clear(&s3, &place, &label)?;
        let from = settings.layout.place(Kind::Snapshot, &snapshot_id);
        copy_all(
            &s3,
            &from,
            &place,
            settings.copy_concurrency,
            snapshot.size_bytes,
            &label,
        )?;
        let record = new_volume_record(&spec, Some(&snapshot_id));
        settings.layout.write(&s3, &record)?;
        info!(
            "created volume {} from snapshot {snapshot_id} at {}",
            spec.id,
            place.uri()
        );
        Ok(to_volume(&settings, &record))
    }

    fn delete(volume_id: String) -> DriverResult<()> {
        let settings = SETTINGS.get()?;
        check_id("volume-id", &volume_id, &settings.layout)?;
        let s3 = settings.client();
        let objects = settings.layout.remove(&s3, Kind::Volume, &volume_id)?;
        info!("deleted volume {volume_id} ({objects} objects)");
        Ok(())
    }

    fn resize(volume_id: String, size_bytes: u64) -> DriverResult<Volume> {
        let settings = SETTINGS.get()?;
        let s3 = settings.client();
        let mut record = volume_record(&s3, &settings, &volume_id)?;
        if size_bytes < record.size_bytes {
            return Err(DriverError::invalid(
                "size",
                format!(
                    "{size_bytes} bytes is smaller than the volume ({} bytes): volumes can only grow",
                    record.size_bytes
                ),
            ));
        }
        if size_bytes > record.size_bytes {
            record.size_bytes = size_bytes;
            settings.layout.write(&s3, &record)?;
            info!("volume {volume_id}: soft quota now {size_bytes} bytes");
        }
        Ok(to_volume(&settings, &record))
    }

    fn snapshot_create(spec: SnapshotSpec) -> DriverResult<Snapshot> {
        let settings = SETTINGS.get()?;
        check_id("id", &spec.id, &settings.layout)?;
        check_id("volume-id", &spec.volume_id, &settings.layout)?;
        let s3 = settings.client();
        if let Some(existing) = settings.layout.read(&s3, Kind::Snapshot, &spec.id)? {
            if existing.volume_id.as_deref() != Some(spec.volume_id.as_str()) {
                return Err(DriverError::already_exists(format!(
                    "snapshot {} exists for volume {}, not {}",
                    spec.id,
                    existing.volume_id.as_deref().unwrap_or("?"),
                    spec.volume_id
                )));
            }
            return Ok(to_snapshot(&settings, &existing));
        }
        let volume = volume_record(&s3, &settings, &spec.volume_id)?;
        let place = settings.layout.place(Kind::Snapshot, &spec.id);
        let label = format!("snapshot {} of volume {}", spec.id, spec.volume_id);
        settings.layout.prepare(&s3, &place)?;
        settings.layout.clear(&s3, &place, &label)?;
        let (objects, bytes) = copy_all(
            &s3,
            &settings.layout.place(Kind::Volume, &spec.volume_id),
            &place,
            settings.copy_concurrency,
            volume.size_bytes,
            &label,
        )?;
        let record = Record {
            kind: Kind::Snapshot,
            id: spec.id.clone(),
            name: spec.name.clone(),
            size_bytes: volume.size_bytes,
            pool: String::new(),
            from: None,
            volume_id: Some(spec.volume_id.clone()),
        };
        settings.layout.write(&s3, &record)?;
        info!(
            "snapshot {} of volume {}: {objects} objects, {bytes} bytes at {}",
            spec.id,
            spec.volume_id,
            place.uri()
        );
        Ok(to_snapshot(&settings, &record))
    }

    fn snapshot_delete(snapshot_id: String) -> DriverResult<()> {
        let settings = SETTINGS.get()?;
        check_id("snapshot-id", &snapshot_id, &settings.layout)?;
        let s3 = settings.client();
        let objects = settings.layout.remove(&s3, Kind::Snapshot, &snapshot_id)?;
        info!("deleted snapshot {snapshot_id} ({objects} objects)");
        Ok(())
    }

    fn attach(volume_id: String, _node: NodeInfo) -> DriverResult<Connection> {
        let settings = SETTINGS.get()?;
        let s3 = settings.client();
        volume_record(&s3, &settings, &volume_id)?;
        let place = settings.layout.place(Kind::Volume, &volume_id);
        Ok(Connection::S3(S3Connection {
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            bucket: place.bucket,
            prefix: place.prefix.trim_end_matches('/').to_string(),
            access_key: settings.access_key.clone(),
            secret_key: settings.secret_key.clone(),
            path_style: settings.path_style,
        }))
    }

    fn detach(volume_id: String, _node: NodeInfo) -> DriverResult<()> {
        // s3fs runs on the host; nothing is held on the S3 side.
        let settings = SETTINGS.get()?;
        check_id("volume-id", &volume_id, &settings.layout)
    }

    fn stats(volume_id: String) -> DriverResult<VolumeStats> {
        let settings = SETTINGS.get()?;
        let s3 = settings.client();
        let record = volume_record(&s3, &settings, &volume_id)?;
        let place = settings.layout.place(Kind::Volume, &volume_id);
        let (objects, bytes) = usage(&s3, &place).map_err(|e| err(&s3, e))?;
        Ok(VolumeStats {
            size_bytes: record.size_bytes,
            used_bytes: bytes,
            objects: Some(objects),
        })
    }

    fn set_qos(_volume_id: String, _qos: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported(
            "set-qos: S3 volumes cannot enforce IOPS or bandwidth limits",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("endpoint", "http://127.0.0.1:7480"),
            ("access_key", "AK"),
            ("secret_key", "SK"),
        ]
    }

    fn field_of(r: DriverResult<S3Settings>) -> String {
        match r {
            Err(DriverError::Invalid(f)) => f.field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn layouts_from_config() {
        let s = parse_settings(pairs(&base())).unwrap();
        assert_eq!(
            s.layout,
            Layout::Buckets {
                name_prefix: "elara-".into()
            }
        );
        assert!(s.path_style);
        let mut with_bucket = base();
        with_bucket.push(("bucket", "data"));
        with_bucket.push(("prefix", "/team"));
        let s = parse_settings(pairs(&with_bucket)).unwrap();
        assert_eq!(
            s.layout,
            Layout::Prefix {
                bucket: "data".into(),
                prefix: "team/".into()
            }
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (k, v, field) in [
            ("endpoint", "ftp://x", "endpoint"),
            ("endpoint", "http://x/path", "endpoint"),
            ("access_key", "a:b", "access_key"),
            ("bucket", "a/b", "bucket"),
            ("bucket_prefix", "a-very-long-bucket-prefix-indeed", "bucket_prefix"),
            ("path_style", "maybe", "path_style"),
            ("capacity", "lots", "capacity"),
            ("copy_concurrency", "0", "copy_concurrency"),
            ("copy_part_size", "1M", "copy_part_size"),
        ] {
            let mut p: Vec<(&str, &str)> = base().into_iter().filter(|(bk, _)| *bk != k).collect();
            p.push((k, v));
            assert_eq!(field_of(parse_settings(pairs(&p))), field, "{k}={v}");
        }
    }

    #[test]
    fn ids_must_name_buckets() {
        let layout = Layout::Buckets {
            name_prefix: "elara-".into(),
        };
        assert!(check_id("id", "0b9e4a2c-1f3d-4c8e-9a7b-5d6e7f809102", &layout).is_ok());
        assert!(check_id("id", "Upper", &layout).is_err());
        assert!(check_id("id", &"a".repeat(56), &layout).is_err());
    }
}

//! `forger`: a driver that lies in `attach`, for the host's attach-side tests
//! (`tests/tests/attach_attacks.rs`). The host must treat every connection a driver returns as
//! untrusted; this driver returns exactly the one a test asks for.
//!
//! `create(spec)` records the volume's labels in `/pool/<id>.conn` and, with `symlink` and
//! `link` labels, first plants a symlink `/pool/<link>` → `<symlink>` (WASI lets a guest make
//! any relative or absolute symlink inside its pool). With `image` it also makes a sparse
//! image file `/pool/<image>` of the volume's size, so a legitimate attach has something to
//! mount. `attach(id)` builds the connection from the recorded labels:
//!
//! | `kind`       | labels used                                                      |
//! |--------------|------------------------------------------------------------------|
//! | `image-file` | `path`                                                           |
//! | `directory`  | `path`                                                           |
//! | `nfs`        | `server`, `port`, `export`, `version`, `options` (`k=v;k2;…`)     |
//! | `iscsi`      | `portal`, `iqn`, `lun`, `user`, `secret`                         |
//! | `s3`         | `endpoint`, `region`, `bucket`, `prefix`, `access_key`, `secret_key` |

use std::collections::BTreeMap;

use elara_driver_sdk::prelude::*;

struct Forger;
elara_driver_sdk::export_driver!(Forger);

fn conn_file(id: &str) -> String {
    format!("/pool/{id}.conn")
}

fn io(what: &str, e: std::io::Error) -> DriverError {
    DriverError::backend(format!("{what}: {e}"))
}

/// `symlink(2)` through wasi-libc (`std::os::wasi::fs::symlink_path` is unstable).
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    use std::ffi::{CString, c_char, c_int};
    unsafe extern "C" {
        fn symlink(target: *const c_char, link: *const c_char) -> c_int;
    }
    let (t, l) = (CString::new(target)?, CString::new(link)?);
    // SAFETY: two valid NUL-terminated strings that outlive the call.
    if unsafe { symlink(t.as_ptr(), l.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn labels(id: &str) -> DriverResult<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(conn_file(id)).map_err(|e| io("reading the labels", e))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn get(l: &BTreeMap<String, String>, k: &str) -> String {
    l.get(k).cloned().unwrap_or_default()
}

fn connection(l: &BTreeMap<String, String>) -> DriverResult<Connection> {
    Ok(match get(l, "kind").as_str() {
        "image-file" => Connection::ImageFile(ImageFileConnection { path: get(l, "path") }),
        "directory" => Connection::Directory(get(l, "path")),
        "nfs" => Connection::Nfs(NfsConnection {
            server: get(l, "server"),
            port: get(l, "port").parse().ok(),
            export: get(l, "export"),
            version: get(l, "version"),
            options: get(l, "options")
                .split(';')
                .filter(|o| !o.is_empty())
                .map(|o| match o.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (o.to_string(), String::new()),
                })
                .collect(),
        }),
        "iscsi" => Connection::Iscsi(IscsiConnection {
            portal: get(l, "portal"),
            iqn: get(l, "iqn"),
            lun: get(l, "lun").parse().unwrap_or(0),
            auth: l.get("user").map(|u| ChapAuth {
                username: u.clone(),
                secret: get(l, "secret"),
            }),
            extra: vec![],
        }),
        "s3" => Connection::S3(S3Connection {
            endpoint: get(l, "endpoint"),
            region: get(l, "region"),
            bucket: get(l, "bucket"),
            prefix: get(l, "prefix"),
            access_key: get(l, "access_key"),
            secret_key: get(l, "secret_key"),
            path_style: true,
        }),
        other => {
            return Err(DriverError::invalid(
                "kind",
                format!("{other:?} is not a connection kind this driver forges"),
            ));
        }
    })
}

impl Guest for Forger {
    fn info() -> DriverInfo {
        DriverInfo {
            name: "forger".into(),
            version: "0.1.0".into(),
            kind: VolumeKind::Block,
            features: Features::empty(),
            config_keys: vec![],
            notes: vec![("purpose".into(), "attach-side attack tests".into())],
        }
    }

    fn configure(_: Vec<(String, String)>) -> DriverResult<()> {
        Ok(())
    }

    fn pools() -> DriverResult<Vec<Pool>> {
        let stats = host::pool_stats()?;
        Ok(vec![Pool {
            name: "default".into(),
            total: Capacity::Bytes(stats.total_bytes),
            free: Capacity::Bytes(stats.available_bytes),
            provisioned_bytes: 0,
            reserved_percentage: 0,
            thin_provisioning: true,
            thick_provisioning: false,
            max_over_subscription_ratio: "20.0".into(),
            capabilities: vec![],
        }])
    }

    fn list_volumes() -> DriverResult<Vec<Volume>> {
        Ok(vec![])
    }

    fn create(spec: VolumeSpec) -> DriverResult<Volume> {
        let l: BTreeMap<String, String> = spec.labels.iter().cloned().collect();
        if let Some(image) = l.get("image") {
            let f = std::fs::File::create(format!("/pool/{image}")).map_err(|e| io("creating the image", e))?;
            f.set_len(spec.size_bytes).map_err(|e| io("sizing the image", e))?;
        }
        if let (Some(target), Some(link)) = (l.get("symlink"), l.get("link")) {
            symlink(target, &format!("/pool/{link}")).map_err(|e| io("planting the symlink", e))?;
        }
        let text: String = l.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
        std::fs::write(conn_file(&spec.id), text).map_err(|e| io("recording the labels", e))?;
        Ok(Volume {
            id: spec.id.clone(),
            pool: spec.pool.clone(),
            size_bytes: spec.size_bytes,
            backend_ref: spec.id,
        })
    }

    fn create_from_snapshot(_: VolumeSpec, _: String) -> DriverResult<Volume> {
        Err(DriverError::unsupported("clones"))
    }
    fn delete(id: String) -> DriverResult<()> {
        let _ = std::fs::remove_file(conn_file(&id));
        Ok(())
    }
    fn resize(_: String, _: u64) -> DriverResult<Volume> {
        Err(DriverError::unsupported("resize"))
    }
    fn snapshot_create(_: SnapshotSpec) -> DriverResult<Snapshot> {
        Err(DriverError::unsupported("snapshots"))
    }
    fn snapshot_delete(_: String) -> DriverResult<()> {
        Err(DriverError::unsupported("snapshots"))
    }
    fn attach(volume_id: String, _: NodeInfo) -> DriverResult<Connection> {
        connection(&labels(&volume_id)?)
    }
    fn detach(_: String, _: NodeInfo) -> DriverResult<()> {
        Ok(())
    }
    fn stats(_: String) -> DriverResult<VolumeStats> {
        Err(DriverError::unsupported("stats"))
    }
    fn set_qos(_: String, _: Qos) -> DriverResult<()> {
        Err(DriverError::unsupported("QoS"))
    }
}

//! The cinder driver against a real OpenStack Cinder (`scripts/services/cinder.sh`: Cinder 29 api +
//! scheduler + volume on 127.0.0.1, noauth, fake multi-pool backends), through real daemons on
//! both stores. Everything the driver claims is checked independently in Cinder's own API (curl),
//! never taken from the driver or the daemon.
//!
//! This machine has no iSCSI initiator: attach is tested up to the connection Cinder returns and
//! the daemon records; the host's bring-up is refused as unsupported, and the test checks that.
//!
//! Each test tags its Cinder volumes with a unique `tag` (backend config) so tests sharing the one
//! Cinder project run in parallel without seeing each other's volumes.

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keystone tests share one test user; the revocation test disables it for a moment, so they
/// take turns (tests of one binary run in parallel).
static KEYSTONE_USER: Mutex<()> = Mutex::new(());

use anyhow::{Context, bail, ensure};
use elara_tests::cinder::{Cinder, MULTI_TYPE};
use elara_tests::*;
use serde_json::{Value, json};

/// A Cinder pool of the `multi` backend (scripts/services/cinder/pools.json: p1 90 GiB free,
/// p2 50, p3 20 thin): not the one Cinder's own weigher would pick, so landing there shows the
/// driver's pinning.
const PINNED_POOL: &str = "elara-test@multi#p2";

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// The first JSON object anywhere in `v` that has the key `key`.
fn find_object<'a>(v: &'a Value, key: &str) -> Option<&'a serde_json::Map<String, Value>> {
    match v {
        Value::Object(o) if o.contains_key(key) => Some(o),
        Value::Object(o) => o.values().find_map(|x| find_object(x, key)),
        Value::Array(a) => a.iter().find_map(|x| find_object(x, key)),
        _ => None,
    }
}

/// The attachment record of `volume` on `node`, read from the daemon's store directly (the daemon
/// must be stopped for the embedded store).
fn stored_attachment(d: &Daemon, volume: &str, node: &str) -> anyhow::Result<Option<Value>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = d.open_store().await?;
        let key = format!("{}attachments/{volume}/{node}", elara_store::PREFIX);
        Ok(match store.get(&key).await? {
            Some(kv) => Some(serde_json::from_slice(&kv.value)?),
            None => None,
        })
    })
}

/// Create, extend, snapshot, restore, attach (connection returned and recorded), detach, a
/// mount the host cannot bring up, and delete — each checked in Cinder.
fn lifecycle(store: StoreKind) -> anyhow::Result<()> {
    let cinder = Cinder::from_env();
    let tag = unique("life");
    let mut opts = DaemonOpts::new(store);
    // The first mount dies right after the driver's attach, with the connection recorded.
    opts.crash_at = Some("mount:after-driver-attach".into());
    let mut d = Daemon::start(opts)?;
    d.ok(&cinder
        .backend_add("cin", &tag, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())?;

    // Pools: Cinder's, with its capability vocabulary.
    let pools = d.json(&["pool", "list"])?;
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["backend"] == "cin")
        .filter_map(|p| p["pool"]["name"].as_str())
        .collect();
    for want in [
        "elara-test@fake#fake",
        "elara-test@multi#p1",
        PINNED_POOL,
        "elara-test@multi#p3",
    ] {
        ensure!(names.contains(&want), "pool {want} not reported: {names:?}");
    }

    // Create in a chosen pool.
    d.ok(&[
        "volume",
        "create",
        "v1",
        "--size",
        "1G",
        "--backend",
        "cin",
        "--pool",
        PINNED_POOL,
    ])?;
    let v1 = d.json(&["volume", "inspect", "v1"])?;
    let (id1, ref1) = (s(&v1, "id").to_string(), s(&v1, "backend_ref").to_string());
    let c1 = cinder.volume_of(&id1)?;
    ensure!(
        s(&c1, "id") == ref1,
        "Elara's backend_ref {ref1} is not the Cinder volume {}",
        c1["id"]
    );
    ensure!(
        c1["status"] == "available" && c1["size"] == 1,
        "Cinder volume after create: {c1}"
    );
    ensure!(
        s(&c1, "os-vol-host-attr:host") == PINNED_POOL,
        "landed in {} instead of {PINNED_POOL}",
        c1["os-vol-host-attr:host"]
    );
    ensure!(
        c1["metadata"]["elara-tag"] == tag.as_str() && c1["name"] == "v1",
        "metadata/name: {c1}"
    );

    // Extend.
    d.ok(&["volume", "resize", "v1", "--size", "2G"])?;
    let c1 = cinder.volume(&ref1)?;
    ensure!(
        c1["size"] == 2 && c1["status"] == "available",
        "after resize to 2G Cinder shows {} GiB, {}",
        c1["size"],
        c1["status"]
    );

    // Snapshot.
    d.ok(&["snapshot", "create", "v1", "--name", "s1"])?;
    let s1 = d.json(&["snapshot", "inspect", "s1"])?;
    let snaps = cinder.snapshots_where("elara-id", s(&s1, "id"))?;
    ensure!(snaps.len() == 1, "Cinder snapshots for s1: {snaps:?}");
    let cs1 = &snaps[0];
    ensure!(
        cs1["status"] == "available" && s(cs1, "volume_id") == ref1,
        "Cinder snapshot: {cs1}"
    );

    // Restore from the snapshot.
    d.ok(&["snapshot", "restore", "s1", "--to", "v2"])?;
    let v2 = d.json(&["volume", "inspect", "v2"])?;
    let c2 = cinder.volume_of(s(&v2, "id"))?;
    ensure!(
        c2["status"] == "available" && s(&c2, "snapshot_id") == s(cs1, "id"),
        "restored Cinder volume: {c2}"
    );
    ensure!(c2["size"].as_u64() >= Some(2), "restored volume is {} GiB", c2["size"]);
    ensure!(
        s(&c2, "os-vol-host-attr:host") == s(&c2["metadata"], "elara-pool"),
        "the restored volume's recorded pool {} is not where Cinder put it ({})",
        c2["metadata"]["elara-pool"],
        c2["os-vol-host-attr:host"]
    );

    // Attach: the daemon dies right after the driver's attach; the connection is recorded.
    let out = d.cli(&["volume", "mount", "v1"])?;
    d.wait_exit(Duration::from_secs(60)).map_err(|e| {
        anyhow::anyhow!("the daemon did not die at mount:after-driver-attach ({e}); mount said {out:?}")
    })?;
    let att = stored_attachment(&d, "v1", &d.opts.node)?.context("no attachment record for v1 in the store")?;
    let conn = find_object(&att["connection"], "portal")
        .with_context(|| format!("recorded connection has no iSCSI portal: {att}"))?;
    let c1 = cinder.volume(&ref1)?;
    ensure!(c1["status"] == "in-use", "Cinder volume after attach: {}", c1["status"]);
    let cinder_atts = c1["attachments"].as_array().cloned().unwrap_or_default();
    ensure!(
        cinder_atts.len() == 1 && cinder_atts[0]["host_name"] == d.opts.node.as_str(),
        "Cinder attachments: {cinder_atts:?}"
    );
    let info = cinder.get(
        &format!("/attachments/{}", s(&cinder_atts[0], "attachment_id")),
        &[],
    )?["attachment"]["connection_info"]
        .clone();
    ensure!(info["driver_volume_type"] == "iscsi", "connection info: {info}");
    ensure!(
        conn["portal"] == info["target_portal"] && conn["iqn"] == info["target_iqn"],
        "recorded {conn:?} vs Cinder's {info}"
    );
    ensure!(
        conn["lun"] == info["target_lun"],
        "lun: recorded {} vs Cinder's {}",
        conn["lun"],
        info["target_lun"]
    );
    ensure!(
        find_object(&conn["auth"], "username").is_some_and(|a| a["username"] == info["auth_username"]),
        "CHAP not recorded: {conn:?}"
    );

    // Restart: the reconciler takes the attach over and undoes it (detach in Cinder).
    d.restart()?;
    d.wait_ops_settled(Duration::from_secs(90))?;
    cinder.wait_for("v1 detached", Duration::from_secs(60), || {
        let v = cinder.volume(&ref1)?;
        Ok(v["status"] == "available"
            && v["attachments"].as_array().is_some_and(|a| a.is_empty())
            && cinder.attachments(&ref1)?.is_empty())
    })?;
    let v1 = d.json(&["volume", "inspect", "v1"])?;
    ensure!(
        v1["status"] == "available" && v1["attachments"].as_array().is_some_and(|a| a.is_empty()),
        "v1 after recovery: {v1}"
    );

    // A plain mount: the driver attaches, but the LUN's portal (127.0.0.1:3260) is not among
    // the backend's grants (only Cinder's API is): the host refuses to connect there, naming
    // the volume, the backend and the portal, and the undo leaves no half attachment (no helper,
    // no Cinder attachment).
    let err = d.fails(&["volume", "mount", "v1"])?;
    let portal = conn["portal"].as_str().unwrap_or("?");
    ensure!(
        err.contains("v1") && err.contains("backend cin") && err.contains(portal) && err.contains("granted"),
        "mount error does not say why: {err}"
    );
    ensure!(
        helpers_under(&d.dir).is_empty(),
        "a helper is left after the refused mount: {:?}",
        helpers_under(&d.dir)
    );
    ensure!(
        cinder.attachments(&ref1)?.is_empty(),
        "an attachment is left after the refused mount"
    );
    ensure!(
        cinder.volume(&ref1)?["status"] == "available",
        "v1 not available after the refused mount"
    );

    // Delete everything; Cinder must end empty for this tag.
    d.ok(&["volume", "delete", "v2"])?;
    d.ok(&["snapshot", "delete", "s1"])?;
    d.ok(&["volume", "delete", "v1"])?;
    ensure!(
        cinder.volumes_where("elara-tag", &tag)?.is_empty(),
        "Cinder volumes left: {:?}",
        cinder.volumes_where("elara-tag", &tag)?
    );
    ensure!(
        cinder.snapshots_where("elara-id", s(&s1, "id"))?.is_empty(),
        "Cinder snapshot left"
    );
    ensure!(
        cinder.get(&format!("/volumes/{ref1}"), &[]).is_err(),
        "v1 still in Cinder"
    );
    Ok(())
}

/// Cinder's own errors reach the user: no valid backend (with Cinder's user message), quota
/// (HTTP 413), a bad config value (the field named); and nothing is left behind.
fn errors(store: StoreKind) -> anyhow::Result<()> {
    let cinder = Cinder::from_env();
    cinder.ensure_multi_type()?;
    let tag = unique("err");
    let d = Daemon::start(DaemonOpts::new(store))?;

    // Bad input: the field is named and no backend is added.
    let args = cinder.backend_add("bad", &tag, &[("auth", "kerberos")]);
    let err = d.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(err.contains("auth") && err.contains("kerberos"), "bad auth mode: {err}");
    let args = cinder.backend_add("bad", &tag, &[("pools", "all")]);
    let err = d.fails(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(err.contains("pools"), "bad pools: {err}");
    ensure!(
        d.fails(&["backend", "inspect", "bad"]).is_ok(),
        "a refused backend was added"
    );

    // No valid backend: one pool per type (capacity unknown to Elara), more than any multi pool has.
    let args = cinder.backend_add("cint", &tag, &[("pools", "types"), ("volume_type", MULTI_TYPE)]);
    d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let err = d.fails(&["volume", "create", "big", "--size", "500G", "--backend", "cint"])?;
    ensure!(
        err.contains("Could not find any available weighted backend"),
        "no Cinder message in: {err}"
    );
    ensure!(
        d.fails(&["volume", "inspect", "big"]).is_ok(),
        "the failed volume is still listed"
    );
    cinder.wait_for("the failed volume removed", Duration::from_secs(30), || {
        Ok(cinder.volumes_where("elara-tag", &tag)?.is_empty())
    })?;
    // The same type takes a volume that fits.
    d.ok(&["volume", "create", "small", "--size", "1G", "--backend", "cint"])?;
    let small = cinder.volume_of(s(&d.json(&["volume", "inspect", "small"])?, "id"))?;
    ensure!(
        small["volume_type"] == MULTI_TYPE && s(&small, "os-vol-host-attr:host").starts_with("elara-test@multi#"),
        "{small}"
    );
    d.ok(&["volume", "delete", "small"])?;

    // Quota: a project of its own with no volumes allowed.
    // Cinder's routes take hex project ids only.
    let project = {
        use std::hash::{BuildHasher, RandomState};
        let h = RandomState::new();
        format!(
            "{:016x}{:016x}",
            h.hash_one(unique("p")),
            h.hash_one(std::process::id())
        )
    };
    let admin_endpoint = cinder.endpoint.replace(&cinder.project, &project);
    let (code, v) = cinder.call(
        "PUT",
        &format!("/os-quota-sets/{project}"),
        &[],
        Some(&json!({ "quota_set": { "volumes": 0 } })),
    )?;
    ensure!(code == 200, "setting the quota: HTTP {code}: {v}");
    let args = cinder.backend_add("cinq", &tag, &[("project_id", &project), ("endpoint", &admin_endpoint)]);
    d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let err = d.fails(&[
        "volume",
        "create",
        "q1",
        "--size",
        "1G",
        "--backend",
        "cinq",
        "--pool",
        PINNED_POOL,
    ])?;
    ensure!(err.contains("quota") && err.contains("volumes"), "quota error: {err}");
    ensure!(
        d.fails(&["volume", "inspect", "q1"]).is_ok(),
        "the refused volume is still listed"
    );
    ensure!(
        cinder.volumes_where("elara-tag", &tag)?.is_empty(),
        "Cinder volumes left"
    );
    Ok(())
}

/// The daemon is killed during a Cinder create — at each create crash point and once at a moment
/// the test picks while the driver is at work — and restarted: every Elara volume then has
/// exactly one Cinder volume, no Cinder volume is left without an Elara volume, and creating the
/// volume again gives exactly one Cinder volume for it.
fn crash_during_create(store: StoreKind) -> anyhow::Result<()> {
    let cinder = Cinder::from_env();
    for point in [
        "create:after-intent",
        "create:after-driver",
        "kill-while-cinder-creates",
    ] {
        assert!(
            !point.contains(':') || elara::ops::faults::POINTS.contains(&point),
            "{point} is not a crash point of the daemon"
        );
        let tag = unique("crash");
        let mut opts = DaemonOpts::new(store);
        if point.starts_with("create:") {
            opts.crash_at = Some(point.into());
        }
        let mut d = Daemon::start(opts)?;
        d.ok(&cinder
            .backend_add("cin", &tag, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>())?;
        // The pools are known before the create, so the kill lands in the create itself.
        d.ok(&["pool", "list"])?;
        let mut create = Command::new(elara_bin());
        create.arg("-s").arg(&d.socket).args([
            "volume",
            "create",
            "cv",
            "--size",
            "1G",
            "--backend",
            "cin",
            "--pool",
            PINNED_POOL,
        ]);
        if point.starts_with("create:") {
            let out = create.output()?;
            d.wait_exit(Duration::from_secs(60))
                .map_err(|e| anyhow::anyhow!("{point}: the daemon did not die ({e}); create said {out:?}"))?;
        } else {
            // Kill the daemon as soon as Cinder shows the volume being made for it.
            let mut child = create
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            let mut seen = String::new();
            cinder.wait_for("a Cinder volume for cv", Duration::from_secs(60), || {
                let vols = cinder.volumes_where("elara-tag", &tag)?;
                seen = vols.first().map(|v| s(v, "status").to_string()).unwrap_or_default();
                Ok(!vols.is_empty())
            })?;
            d.kill9();
            let _ = child.wait();
            eprintln!("{point} ({store:?}): killed the daemon while Cinder showed the volume {seen}");
        }
        d.restart()?;
        d.wait_ops_settled(Duration::from_secs(120))
            .with_context(|| point.to_string())?;
        let check = |when: &str| -> anyhow::Result<()> {
            let elara: Vec<Value> = d
                .json(&["volume", "list", "--backend", "cin"])
                .map(|v| v.as_array().cloned().unwrap_or_default())?;
            let tagged = cinder.volumes_where("elara-tag", &tag)?;
            for v in &elara {
                ensure!(
                    v["status"] == "available",
                    "{point} {when}: volume {} is {}",
                    v["name"],
                    v["status"]
                );
                let mine: Vec<&Value> = tagged.iter().filter(|c| c["metadata"]["elara-id"] == v["id"]).collect();
                ensure!(
                    mine.len() == 1,
                    "{point} {when}: {} Cinder volumes for Elara volume {}: {tagged:?}",
                    mine.len(),
                    v["name"]
                );
                ensure!(
                    mine[0]["id"] == v["backend_ref"] && mine[0]["status"] == "available",
                    "{point} {when}: {:?}",
                    mine[0]
                );
            }
            let orphans: Vec<&Value> = tagged
                .iter()
                .filter(|c| !elara.iter().any(|v| v["id"] == c["metadata"]["elara-id"]))
                .collect();
            ensure!(
                orphans.is_empty(),
                "{point} {when}: Cinder volumes without an Elara volume: {orphans:?}"
            );
            Ok(())
        };
        check("after restart")?;
        let kept = d.fails(&["volume", "inspect", "cv"]).is_err();
        eprintln!(
            "{point} ({store:?}): after restart the create was {}",
            if kept { "completed" } else { "undone" }
        );
        // However the reconciler settled it, creating the volume (again) gives exactly one.
        if !kept {
            d.ok(&[
                "volume",
                "create",
                "cv",
                "--size",
                "1G",
                "--backend",
                "cin",
                "--pool",
                PINNED_POOL,
            ])?;
        }
        check("after create")?;
        let cv = d.json(&["volume", "inspect", "cv"])?;
        cinder.volume_of(s(&cv, "id"))?;
        d.ok(&["volume", "delete", "cv"])?;
        ensure!(
            cinder.volumes_where("elara-tag", &tag)?.is_empty(),
            "{point}: Cinder volumes left after delete"
        );
        eprintln!("{point} ({store:?}): consistent");
    }
    Ok(())
}

#[test]
fn cinder_lifecycle_embedded() -> anyhow::Result<()> {
    lifecycle(StoreKind::Embedded)
}

#[test]
fn cinder_lifecycle_etcd() -> anyhow::Result<()> {
    lifecycle(StoreKind::Etcd)
}

#[test]
fn cinder_errors_embedded() -> anyhow::Result<()> {
    errors(StoreKind::Embedded)
}

#[test]
fn cinder_errors_etcd() -> anyhow::Result<()> {
    errors(StoreKind::Etcd)
}

#[test]
fn cinder_crash_during_create_embedded() -> anyhow::Result<()> {
    crash_during_create(StoreKind::Embedded)
}

#[test]
fn cinder_crash_during_create_etcd() -> anyhow::Result<()> {
    crash_during_create(StoreKind::Etcd)
}

/// `elara driver check` (the conformance suite) passes on the built cinder driver against Cinder.
#[test]
fn cinder_driver_check() -> anyhow::Result<()> {
    let cinder = Cinder::from_env();
    let wasm = drivers_dir().join("cinder.wasm");
    ensure!(
        wasm.exists(),
        "{} is missing: run scripts/build-drivers.sh",
        wasm.display()
    );
    let tag = unique("conf");
    let out = Command::new(elara_bin())
        .args(["driver", "check"])
        .arg(&wasm)
        .args(cinder.driver_check_args(&tag, &[]))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    ensure!(
        out.status.success(),
        "driver check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("CONFORMS") && !stdout.contains("DOES NOT CONFORM"),
        "{stdout}"
    );
    for check in [
        "create-idempotent",
        "create-from-snapshot",
        "attach",
        "detach",
        "resize",
    ] {
        ensure!(
            stdout.lines().any(|l| l.starts_with("PASS") && l.contains(check)),
            "{check} did not pass:\n{stdout}"
        );
    }
    ensure!(
        cinder.volumes_where("elara-tag", &tag)?.is_empty(),
        "the suite left Cinder volumes"
    );
    Ok(())
}

/// A create cut off in the middle of the driver's call (the call's wall-clock limit drops the
/// instance while it waits for Cinder), then retried with the same Elara id on a fresh instance,
/// finds the volume the first attempt made: exactly one Cinder volume for the id. This is the
/// driver's half of crash safety, without the daemon's reconciler in between.
#[test]
fn cinder_create_retried_after_interruption() -> anyhow::Result<()> {
    use elara_runtime::{BackendSpec, CallError, HostGrant, Limits, Runtime, RuntimeConfig, VolumeSpec};
    let cinder = Cinder::from_env();
    let wasm =
        std::fs::read(drivers_dir().join("cinder.wasm")).context("reading cinder.wasm (scripts/build-drivers.sh)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cinder-driver-cache"),
            ..Default::default()
        })?;
        let driver = runtime.load_driver(&wasm).await?;
        let tag = unique("retry");
        let pool_dir = tempfile::tempdir()?;
        let grant: HostGrant = cinder.host_port().parse()?;
        let config = vec![
            ("endpoint".to_string(), cinder.endpoint.clone()),
            ("auth".into(), "noauth".into()),
            ("project_id".into(), cinder.project.clone()),
            ("tag".into(), tag.clone()),
        ];
        let open = |name: &str, limits: Limits| {
            let spec = BackendSpec {
                name: name.into(),
                pool_dir: pool_dir.path().to_path_buf(),
                config: config.clone(),
                grants: vec![grant.clone()],
                limits,
            };
            runtime.open_backend(&driver, spec)
        };
        let patient = open("cinder-patient", Limits::default()).await?;
        // Find a call limit that ends the call after Cinder accepted the create but before it finished.
        for limit_ms in [150u64, 250, 350, 450, 600, 800, 1000, 1300] {
            let id = unique("cut");
            let spec = VolumeSpec {
                id: id.clone(),
                name: format!("{id}-name"),
                size_bytes: 1 << 30,
                pool: PINNED_POOL.into(),
                labels: vec![],
                qos: None,
            };
            let hasty = open(
                "cinder-hasty",
                Limits {
                    call_timeout: Duration::from_millis(limit_ms),
                    ..Limits::default()
                },
            )
            .await?;
            let first = hasty.create(&spec).await;
            let seen = cinder.volumes_where("elara-id", &id)?;
            let interrupted = matches!(first, Err(CallError::Timeout { .. })) && !seen.is_empty();
            if !interrupted {
                // Cut off before Cinder had the volume, or finished in time: try a longer limit.
                // (A POST still in flight may land later; the sweep at the end removes it.)
                patient.delete(&id).await?;
                continue;
            }
            let state = s(&seen[0], "status").to_string();
            let again = patient.create(&spec).await?;
            let vols = cinder.volumes_where("elara-id", &id)?;
            ensure!(
                vols.len() == 1,
                "after the retry {} Cinder volumes carry {id}: {vols:?}",
                vols.len()
            );
            ensure!(
                vols[0]["id"] == again.backend_ref.as_str() && vols[0]["status"] == "available",
                "retry returned {again:?}; Cinder has {:?}",
                vols[0]
            );
            ensure!(
                s(&seen[0], "id") == again.backend_ref,
                "the retry made a new volume instead of finding {}",
                seen[0]["id"]
            );
            eprintln!("create cut off after {limit_ms} ms with the Cinder volume {state}; the retry found it");
            patient.delete(&id).await?;
            ensure!(
                cinder.volumes_where("elara-id", &id)?.is_empty(),
                "delete left a Cinder volume for {id}"
            );
            sweep(&cinder, &patient, &tag).await?;
            return Ok(());
        }
        sweep(&cinder, &patient, &tag).await?;
        bail!("no call limit cut a create off after Cinder accepted it; widen the list of limits")
    })
}

/// The Keystone that `scripts/services/cinder.sh` runs, with the Keystone-authenticated
/// cinder-api beside the noauth one (same Cinder).
struct Keystone {
    /// `http://127.0.0.1:5000/v3`.
    url: String,
    /// The Keystone-authenticated Cinder endpoint, `http://127.0.0.1:8777/v3`.
    cinder: String,
    user: String,
    /// A user with the member role only (no admin APIs); same password.
    member_user: String,
    password: String,
    project: String,
    project_id: String,
    appcred_id: String,
    appcred_secret: String,
    admin_password: String,
}

impl Keystone {
    fn from_env() -> Keystone {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: start the stack with `scripts/services/cinder.sh start .work/cinder` and export the lines it prints")
            })
        };
        Keystone {
            url: var("ELARA_TEST_KEYSTONE"),
            cinder: var("ELARA_TEST_CINDER_KEYSTONE"),
            user: var("ELARA_TEST_KEYSTONE_USER"),
            member_user: var("ELARA_TEST_KEYSTONE_MEMBER_USER"),
            password: var("ELARA_TEST_KEYSTONE_PASSWORD"),
            project: var("ELARA_TEST_KEYSTONE_PROJECT"),
            project_id: var("ELARA_TEST_KEYSTONE_PROJECT_ID"),
            appcred_id: var("ELARA_TEST_KEYSTONE_APPCRED_ID"),
            appcred_secret: var("ELARA_TEST_KEYSTONE_APPCRED_SECRET"),
            admin_password: var("ELARA_TEST_KEYSTONE_ADMIN_PASSWORD"),
        }
    }

    fn hosts(&self) -> Vec<String> {
        [&self.url, &self.cinder]
            .iter()
            .map(|u| {
                u.trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// `backend add` arguments for a Keystone-authenticated backend (`auth` pairs given by the caller).
    fn backend_add(&self, name: &str, tag: &str, auth: &[(&str, &str)]) -> Vec<String> {
        let mut args: Vec<String> = ["backend", "add", name, "--driver", "cinder"]
            .map(String::from)
            .to_vec();
        let mut config = vec![
            ("endpoint".to_string(), self.cinder.clone()),
            ("auth_url".into(), self.url.clone()),
            ("tag".into(), tag.into()),
        ];
        config.extend(auth.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (k, v) in config {
            args.push("--config".into());
            args.push(format!("{k}={v}"));
        }
        for h in self.hosts() {
            args.push("--allow-host".into());
            args.push(h);
        }
        args
    }

    fn password_auth(&self) -> Vec<(&str, &str)> {
        vec![
            ("username", &self.user),
            ("password", &self.password),
            ("project_name", &self.project),
        ]
    }

    /// The noauth view of the Keystone project's volumes (an independent check).
    fn noauth_view(&self, cinder: &Cinder) -> Cinder {
        Cinder {
            endpoint: cinder.endpoint.replace(&cinder.project, &self.project_id),
            project: self.project_id.clone(),
            token: format!("admin:{}", self.project_id),
        }
    }

    /// A password token for `user` scoped to `project` (curl), or the HTTP status that refused it.
    fn token(&self, user: &str, password: &str, project: &str) -> anyhow::Result<Result<String, u16>> {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let out = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "30",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["--data-binary", &body.to_string(), &format!("{}/auth/tokens", self.url)])
            .output()?;
        let head = String::from_utf8_lossy(&out.stdout);
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let token = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("x-subject-token:")
                    .or_else(|| l.strip_prefix("X-Subject-Token:"))
            })
            .map(|t| t.trim().to_string());
        Ok(match (status, token) {
            (201, Some(t)) => Ok(t),
            (s, _) => Err(s),
        })
    }

    /// `curl` against Keystone with a token; the HTTP status.
    fn keystone_call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-m",
            "30",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-H",
            &format!("X-Auth-Token: {token}"),
        ]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    /// Revoke every token of the test user (disable, then enable it), and wait until a fresh
    /// token of the user is accepted by Cinder again (Keystone's revocation events have
    /// one-second granularity: tokens issued in the same second are refused too).
    fn revoke_user_tokens(&self) -> anyhow::Result<()> {
        let admin = self
            .token("admin", &self.admin_password, "admin")?
            .map_err(|s| anyhow::anyhow!("admin login: HTTP {s}"))?;
        let (code, users) = self.keystone_call(&admin, "GET", &format!("/users?name={}", self.user), None)?;
        ensure!(code == 200, "listing users: HTTP {code}");
        let id = users["users"][0]["id"].as_str().context("no such user")?.to_string();
        for enabled in [false, true] {
            let (code, v) = self.keystone_call(
                &admin,
                "PATCH",
                &format!("/users/{id}"),
                Some(&json!({"user": {"enabled": enabled}})),
            )?;
            ensure!(code == 200, "setting enabled={enabled}: HTTP {code}: {v}");
        }
        let start = Instant::now();
        loop {
            if let Ok(t) = self.token(&self.user, &self.password, &self.project)? {
                let out = Command::new("curl")
                    .args([
                        "-sS",
                        "-m",
                        "30",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-H",
                        &format!("X-Auth-Token: {t}"),
                    ])
                    .arg(format!("{}/{}/volumes", self.cinder, self.project_id))
                    .output()?;
                if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                    return Ok(());
                }
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "fresh tokens of {} still refused after 30 s",
                self.user
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Remove the volumes of `tag` that creates cut off while their POST was still in flight made
/// after the test looked: poll Cinder (bounded) until it shows none for 3 s, the time a POST
/// already sent takes to land here at most.
async fn sweep(cinder: &Cinder, backend: &elara_runtime::Backend, tag: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let left = cinder.volumes_where("elara-tag", tag)?;
        if left.is_empty() && quiet_since.elapsed() > Duration::from_secs(3) {
            return Ok(());
        }
        for v in &left {
            backend.delete(s(&v["metadata"], "elara-id")).await?;
            quiet_since = Instant::now();
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "Cinder volumes of tag {tag} keep appearing: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keystone v3 through the daemon: a password backend and an application-credential backend
/// create and delete volumes in the Keystone project (checked through Cinder in that project);
/// a wrong password is refused naming `password`.
fn keystone_auth(store: StoreKind) -> anyhow::Result<()> {
    let _turn = KEYSTONE_USER.lock().unwrap_or_else(|p| p.into_inner());
    let cinder = Cinder::from_env();
    let ks = Keystone::from_env();
    let view = ks.noauth_view(&cinder);
    let tag = unique("ks");
    let d = Daemon::start(DaemonOpts::new(store))?;
    let add = |args: Vec<String>| d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    add(ks.backend_add("kspw", &tag, &ks.password_auth()))?;
    add(ks.backend_add(
        "ksac",
        &tag,
        &[
            ("auth", "application_credential"),
            ("application_credential_id", &ks.appcred_id),
            ("application_credential_secret", &ks.appcred_secret),
        ],
    ))?;
    // The secrets are stored, never shown.
    let shown = d.ok(&["backend", "inspect", "ksac"])? + &d.ok(&["backend", "inspect", "kspw"])?;
    ensure!(
        !shown.contains(&ks.appcred_secret) && !shown.contains(&ks.password),
        "a secret is shown by backend inspect:\n{shown}"
    );

    for (backend, name) in [("kspw", "kv1"), ("ksac", "kv2")] {
        d.ok(&[
            "volume",
            "create",
            name,
            "--size",
            "1G",
            "--backend",
            backend,
            "--pool",
            PINNED_POOL,
        ])?;
        let v = d.json(&["volume", "inspect", name])?;
        let c = view.volume_of(s(&v, "id"))?;
        ensure!(
            c["status"] == "available" && s(&c, "os-vol-tenant-attr:tenant_id") == ks.project_id,
            "{backend}: {c}"
        );
        ensure!(
            s(&c, "os-vol-host-attr:host") == PINNED_POOL,
            "{backend}: landed in {}",
            c["os-vol-host-attr:host"]
        );
    }

    // Without admin rights: one pool per volume type, capacity unknown; Cinder places the volume.
    cinder.ensure_multi_type()?;
    let member = [
        ("username", ks.member_user.as_str()),
        ("password", &ks.password),
        ("project_name", &ks.project),
        ("volume_type", MULTI_TYPE),
    ];
    add(ks.backend_add("ksmember", &tag, &member))?;
    let pools: Vec<Value> = d
        .json(&["pool", "list"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["backend"] == "ksmember")
        .collect();
    ensure!(
        pools.len() == 1 && pools[0]["pool"]["name"] == MULTI_TYPE,
        "member pools: {pools:?}"
    );
    ensure!(
        !pools[0]["pool"]["total"].to_string().contains("ytes"),
        "a member cannot know the capacity: {}",
        pools[0]
    );
    d.ok(&["volume", "create", "kv4", "--size", "1G", "--backend", "ksmember"])?;
    let c = view.volume_of(s(&d.json(&["volume", "inspect", "kv4"])?, "id"))?;
    ensure!(
        c["volume_type"] == MULTI_TYPE && s(&c, "os-vol-host-attr:host").starts_with("elara-test@multi#"),
        "member volume: {c}"
    );
    d.ok(&["volume", "delete", "kv4"])?;

    add(ks.backend_add(
        "ksbad",
        &tag,
        &[
            ("username", &ks.user),
            ("password", "not-the-password"),
            ("project_name", &ks.project),
        ],
    ))?;
    let err = d.fails(&["volume", "create", "kv3", "--size", "1G", "--backend", "ksbad"])?;
    ensure!(
        err.contains("password") && err.contains("refused the credentials"),
        "wrong password: {err}"
    );

    d.ok(&["volume", "delete", "kv1"])?;
    d.ok(&["volume", "delete", "kv2"])?;
    ensure!(
        view.volumes_where("elara-tag", &tag)?.is_empty(),
        "volumes left in the Keystone project"
    );
    Ok(())
}

#[test]
fn cinder_keystone_auth_embedded() -> anyhow::Result<()> {
    keystone_auth(StoreKind::Embedded)
}

#[test]
fn cinder_keystone_auth_etcd() -> anyhow::Result<()> {
    keystone_auth(StoreKind::Etcd)
}

/// A driver instance whose cached Keystone token was revoked logs in again when Cinder answers
/// 401, and the call succeeds. One backend, calls one after another: the same instance, so the
/// second call starts with the revoked token.
#[test]
fn cinder_keystone_token_renewed_after_revocation() -> anyhow::Result<()> {
    let _turn = KEYSTONE_USER.lock().unwrap_or_else(|p| p.into_inner());
    use elara_runtime::{BackendSpec, HostGrant, Limits, Runtime, RuntimeConfig, VolumeSpec};
    let cinder = Cinder::from_env();
    let ks = Keystone::from_env();
    let view = ks.noauth_view(&cinder);
    let wasm =
        std::fs::read(drivers_dir().join("cinder.wasm")).context("reading cinder.wasm (scripts/build-drivers.sh)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cinder-driver-cache"),
            ..Default::default()
        })?;
        let driver = runtime.load_driver(&wasm).await?;
        let tag = unique("renew");
        let pool_dir = tempfile::tempdir()?;
        let mut config = vec![
            ("endpoint".to_string(), ks.cinder.clone()),
            ("auth_url".into(), ks.url.clone()),
            ("tag".into(), tag.clone()),
        ];
        config.extend(ks.password_auth().iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let grants = ks
            .hosts()
            .iter()
            .map(|h| h.parse::<HostGrant>())
            .collect::<Result<Vec<_>, _>>()?;
        let spec = BackendSpec {
            name: "cinder-keystone".into(),
            pool_dir: pool_dir.path().to_path_buf(),
            config,
            grants,
            limits: Limits::default(),
        };
        let backend = runtime.open_backend(&driver, spec).await?;
        let id = unique("renew-vol");
        let vspec = VolumeSpec {
            id: id.clone(),
            name: id.clone(),
            size_bytes: 1 << 30,
            pool: PINNED_POOL.into(),
            labels: vec![],
            qos: None,
        };
        let made = backend.create(&vspec).await?;
        ks.revoke_user_tokens()?;
        let grown = backend
            .resize(&id, 2 << 30)
            .await
            .context("resize after the token was revoked")?;
        ensure!(grown.size_bytes == 2 << 30, "{grown:?}");
        let c = view.volume_of(&id)?;
        ensure!(c["size"] == 2 && s(&c, "id") == made.backend_ref, "{c}");
        backend.delete(&id).await?;
        ensure!(view.volumes_where("elara-tag", &tag)?.is_empty(), "volume left");
        Ok(())
    })
}

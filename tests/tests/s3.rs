//! The s3 driver against a real S3 server (Ceph RADOS Gateway from `scripts/services/s3.sh`),
//! through the real daemon, a private dockerd and s3fs-fuse. What S3 holds is checked with boto3,
//! never with the driver itself.
//!
//! Needs root, /dev/fuse, s3fs, docker.io and the env `ELARA_TEST_S3_*` (scripts/test.sh).

use std::path::Path;
use std::process::Command;

use elara_tests::docker::{Engine, IMAGE, Plugin};
use elara_tests::s3::S3Server;
use elara_tests::*;
use serde_json::Value;

/// The two layouts of the driver.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// No `bucket`: a bucket per volume.
    BucketPerVolume,
    /// `bucket=B`: a key prefix per volume in B.
    PrefixPerVolume,
}

/// A short tag unique to this run, usable in bucket names (lower-case, digits, `-`).
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{:x}{:x}", std::process::id() & 0xffff, nanos & 0xfffff)
}

/// A daemon serving a docker plugin, an engine pointed at it, and the S3 server.
struct Rig {
    s3: S3Server,
    daemon: Daemon,
    engine: Engine,
    plugin: Plugin,
    /// Whether this kernel has FUSE (/dev/fuse): without it s3fs cannot mount, and the tests
    /// write and read the objects with boto3 instead of containers.
    fuse: bool,
}

impl Rig {
    fn start(store: StoreKind) -> anyhow::Result<Rig> {
        let s3 = S3Server::from_env();
        let plugin = Plugin::new()?;
        let mut opts = DaemonOpts::new(store);
        opts.plugin_dir = Some(plugin.dir.clone());
        let daemon = Daemon::start(opts)?;
        let engine = Engine::start(&[])?;
        // ELARA_TEST_S3_NO_FUSE=1 takes the no-FUSE path on a machine that has FUSE.
        let fuse = Path::new("/dev/fuse").exists() && std::env::var_os("ELARA_TEST_S3_NO_FUSE").is_none();
        if !fuse {
            let why = if Path::new("/dev/fuse").exists() {
                "ELARA_TEST_S3_NO_FUSE is set"
            } else {
                "/dev/fuse is missing: this kernel or container has no FUSE"
            };
            eprintln!(
                "SKIP (mount steps only): {why}, so s3fs cannot mount; volumes are written and read with boto3 \
                 instead of containers"
            );
        }
        Ok(Rig {
            s3,
            daemon,
            engine,
            plugin,
            fuse,
        })
    }

    fn add_backend(&self, name: &str, extra: &[(&str, &str)]) -> anyhow::Result<String> {
        let args = self.s3.backend_add_args(name, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.daemon.ok(&args)
    }

    fn volume_id(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.daemon.json(&["volume", "inspect", name])?["id"]
            .as_str()
            .unwrap()
            .to_string())
    }

    /// `docker run --rm -v VOL:/data busybox sh -c SCRIPT`; returns stdout.
    fn run(&self, volume: &str, script: &str) -> anyhow::Result<String> {
        self.engine.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/data"),
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    }
}

/// Where a volume's objects are, as boto3 should find them.
fn volume_place(layout: Layout, naming: &str, id: &str) -> (String, String) {
    match layout {
        Layout::BucketPerVolume => (format!("{naming}v-{id}"), String::new()),
        Layout::PrefixPerVolume => (naming.to_string(), format!("elara/volumes/{id}/")),
    }
}

fn snapshot_place(layout: Layout, naming: &str, id: &str) -> (String, String) {
    match layout {
        Layout::BucketPerVolume => (format!("{naming}s-{id}"), String::new()),
        Layout::PrefixPerVolume => (naming.to_string(), format!("elara/snapshots/{id}/")),
    }
}

/// Relative keys under a prefix, sorted.
fn rel_keys(objects: &[(String, u64)], prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = objects.iter().map(|(k, _)| k[prefix.len()..].to_string()).collect();
    keys.sort();
    keys
}

fn docker_lifecycle(layout: Layout, store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let rig = Rig::start(store)?;
    let s3 = &rig.s3;
    let tag = run_tag();
    // Bucket-per-volume: buckets `<tag>-v-<id>`; prefix layout: the one bucket `<tag>-data`.
    let naming = match layout {
        Layout::BucketPerVolume => format!("{tag}-"),
        Layout::PrefixPerVolume => format!("{tag}-data"),
    };
    // The prefix layout also copies objects above 5 MiB in parts (UploadPartCopy), as S3 needs
    // above 5 GiB.
    let extra: Vec<(&str, &str)> = match layout {
        Layout::BucketPerVolume => vec![("bucket_prefix", naming.as_str())],
        Layout::PrefixPerVolume => vec![("bucket", naming.as_str()), ("copy_part_size", "5M")],
    };
    rig.add_backend("s3a", &extra)?;
    let result = docker_lifecycle_steps(&rig, layout, &naming);
    // Whatever happened, leave nothing in the shared S3 server.
    let _ = s3.purge(&tag);
    result
}

fn docker_lifecycle_steps(rig: &Rig, layout: Layout, naming: &str) -> anyhow::Result<()> {
    let (s3, d, docker, plugin) = (&rig.s3, &rig.daemon, &rig.engine, &rig.plugin.name);

    // Create through Docker; the volume is S3's bucket (or prefix) under Elara's id.
    docker.ok(&[
        "volume",
        "create",
        "-d",
        plugin,
        "-o",
        "backend=s3a",
        "-o",
        "size=2G",
        "vol",
    ])?;
    let id = rig.volume_id("vol")?;
    let (bucket, prefix) = volume_place(layout, naming, &id);
    let v = d.json(&["volume", "inspect", "vol"])?;
    assert_eq!(v["backend"], "s3a");
    // The size is a soft quota, and the driver says so; S3 reports no capacity.
    let notes = d.json(&["driver", "inspect", "s3"])?["info"]["notes"].to_string();
    assert!(notes.contains("not enforced by S3"), "{notes}");
    let pools = d.json(&["pool", "list"])?;
    let pool = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["backend"] == "s3a")
        .expect("s3a reports a pool");
    assert_eq!(
        (&pool["pool"]["total"], &pool["pool"]["free"]),
        (&Value::from("Unknown"), &Value::from("Unknown")),
        "{pool}"
    );
    assert!(
        pool["pool"]["capabilities"]
            .to_string()
            .contains(r#"["type","object"]"#),
        "{pool}"
    );
    assert_eq!(v["backend_ref"], format!("s3://{bucket}/{prefix}"), "{v}");
    assert_eq!(
        s3.objects(&bucket, &prefix)?,
        Some(vec![]),
        "the new volume's place exists and is empty"
    );

    // A container writes through s3fs; the objects are in S3 (boto3 reads them).
    let content = format!("hello from {} at {}", d.opts.namespace, prefix);
    let big_sum = if rig.fuse {
        rig.run(
            "vol",
            &format!(
                "echo '{content}' > /data/hello.txt && mkdir -p /data/dir && echo nested > /data/dir/n.txt && \
                 dd if=/dev/urandom of=/data/big.bin bs=1M count=12 2>/dev/null"
            ),
        )?;
        rig.run("vol", "sha256sum /data/big.bin | cut -d' ' -f1")?
            .trim()
            .to_string()
    } else {
        s3.put(&bucket, &format!("{prefix}hello.txt"), &format!("{content}\n"))?;
        s3.put(&bucket, &format!("{prefix}dir/n.txt"), "nested\n")?;
        s3.put_random(&bucket, &format!("{prefix}big.bin"), 12 << 20)?
    };
    assert_eq!(
        s3.get(&bucket, &format!("{prefix}hello.txt"))?.as_deref(),
        Some(format!("{content}\n").as_str())
    );
    assert_eq!(
        s3.get(&bucket, &format!("{prefix}dir/n.txt"))?.as_deref(),
        Some("nested\n")
    );
    assert_eq!(s3.sha256(&bucket, &format!("{prefix}big.bin"))?, big_sum);
    let objects = s3.objects(&bucket, &prefix)?.unwrap();

    // stats agree with boto3's listing.
    let stats = d.json(&["volume", "stats", "vol"])?;
    assert_eq!(stats["objects"], objects.len() as u64, "{stats} vs {objects:?}");
    assert_eq!(
        stats["used_bytes"],
        objects.iter().map(|(_, s)| s).sum::<u64>(),
        "{stats}"
    );
    assert_eq!(stats["size_bytes"], 2u64 << 30, "the size is the soft quota: {stats}");

    if rig.fuse {
        mounted_checks(rig, &id, &content)?;
    }
    for shown in [
        d.ok(&["volume", "inspect", "vol"])?,
        d.ok(&["backend", "inspect", "s3a"])?,
        d.ok(&["-o", "json", "backend", "list"])?,
    ] {
        assert!(
            !shown.contains(&s3.secret_key) && !shown.contains(&s3.access_key),
            "credentials redacted: {shown}"
        );
    }
    let log = std::fs::read_to_string(d.dir.join("daemon.log"))?;
    assert!(
        !log.contains(&s3.secret_key),
        "the secret key is not in the daemon's log"
    );

    // Snapshot: a server-side copy of every object.
    d.ok(&["snapshot", "create", "vol", "--name", "s1"])?;
    let snap = d.json(&["snapshot", "inspect", "s1"])?;
    let snap_id = snap["id"].as_str().unwrap();
    let (sbucket, sprefix) = snapshot_place(layout, naming, snap_id);
    let copied = s3.objects(&sbucket, &sprefix)?.expect("the snapshot's place exists");
    assert_eq!(
        rel_keys(&copied, &sprefix),
        rel_keys(&objects, &prefix),
        "the snapshot holds every object"
    );
    if layout == Layout::PrefixPerVolume {
        let etag = s3.etag(&sbucket, &format!("{sprefix}big.bin"))?;
        assert!(etag.ends_with("-3"), "12 MiB copied in 3 parts of 5 MiB: ETag {etag}");
    }
    // A change after the snapshot is not in it.
    if rig.fuse {
        rig.run("vol", "echo changed > /data/hello.txt && echo new > /data/after.txt")?;
    } else {
        s3.put(&bucket, &format!("{prefix}hello.txt"), "changed\n")?;
        s3.put(&bucket, &format!("{prefix}after.txt"), "new\n")?;
    }
    assert_eq!(
        s3.get(&sbucket, &format!("{sprefix}hello.txt"))?.as_deref(),
        Some(format!("{content}\n").as_str())
    );

    // Restore into a new volume and read it from a container.
    d.ok(&["snapshot", "restore", "s1", "--to", "restored"])?;
    let rid = rig.volume_id("restored")?;
    let (rbucket, rprefix) = volume_place(layout, naming, &rid);
    assert_eq!(
        rel_keys(&s3.objects(&rbucket, &rprefix)?.unwrap(), &rprefix),
        rel_keys(&objects, &prefix)
    );
    assert_eq!(
        s3.sha256(&rbucket, &format!("{rprefix}big.bin"))?,
        big_sum,
        "the 12 MiB object is intact"
    );
    if rig.fuse {
        assert_eq!(
            rig.run("restored", "cat /data/hello.txt; ls /data")?,
            format!("{content}\nbig.bin\ndir\nhello.txt\n")
        );
        assert_eq!(
            rig.run("restored", "sha256sum /data/big.bin | cut -d' ' -f1")?.trim(),
            big_sum,
            "the 12 MiB file reads back"
        );
    }

    // Delete removes every object, in pages of 1 000: give the volume 2 500 more objects first.
    s3.put_many(&bucket, &format!("{prefix}many/"), 2500, 16)?;
    assert_eq!(
        d.json(&["volume", "stats", "vol"])?["objects"],
        objects.len() as u64 + 1 + 2500
    );
    docker.ok(&["volume", "rm", "restored"])?;
    d.ok(&["snapshot", "delete", "s1"])?;
    docker.ok(&["volume", "rm", "vol"])?;
    for (b, p) in [(&bucket, &prefix), (&sbucket, &sprefix), (&rbucket, &rprefix)] {
        match layout {
            Layout::BucketPerVolume => assert_eq!(s3.objects(b, p)?, None, "bucket {b} is gone"),
            Layout::PrefixPerVolume => assert_eq!(s3.objects(b, p)?, Some(vec![]), "nothing left under {b}/{p}"),
        }
    }
    match layout {
        Layout::BucketPerVolume => {
            let left: Vec<String> = s3.buckets()?.into_iter().filter(|b| b.starts_with(naming)).collect();
            assert!(left.is_empty(), "no bucket of this backend is left: {left:?}");
        }
        Layout::PrefixPerVolume => assert_eq!(s3.objects(naming, "")?, Some(vec![]), "nothing left in {naming}"),
    }
    assert!(d.json(&["volume", "list"])?.as_array().unwrap().is_empty());
    Ok(())
}

/// Steps that need the s3fs mount: the credentials file is 0600 while mounted and removed after,
/// no secret in the process list, delete refused while mounted, a second container reads.
fn mounted_checks(rig: &Rig, id: &str, content: &str) -> anyhow::Result<()> {
    let (s3, d, docker) = (&rig.s3, &rig.daemon, &rig.engine);
    let cid = docker
        .ok(&["run", "-d", "-v", "vol:/data", IMAGE, "sleep", "300"])?
        .trim()
        .to_string();
    let creds = d.dir.join("run/s3").join(format!("{id}.passwd"));
    let mode = std::fs::metadata(&creds).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "{} is 0600 while mounted", creds.display());
    // (Only s3fs's own command line: the test's `elara backend add` had the keys in its argv.)
    let ps = String::from_utf8_lossy(&Command::new("ps").args(["-eo", "args"]).output()?.stdout).into_owned();
    let s3fs: Vec<&str> = ps
        .lines()
        .filter(|l| l.starts_with("s3fs ") && l.contains(id))
        .collect();
    assert_eq!(s3fs.len(), 1, "one s3fs runs for the volume: {ps}");
    assert!(
        !s3fs[0].contains(&s3.secret_key) && !s3fs[0].contains(&s3.access_key),
        "no credentials in {}",
        s3fs[0]
    );
    let err = d.fails(&["volume", "delete", "vol"])?;
    assert!(err.contains("mounted"), "delete refused while mounted: {err}");
    // A second container reads what the first wrote (while the first still holds the mount).
    assert_eq!(
        rig.run("vol", "cat /data/hello.txt /data/dir/n.txt")?,
        format!("{content}\nnested\n")
    );
    docker.ok(&["rm", "-f", &cid])?;
    assert!(!creds.exists(), "the credentials file is removed on the last unmount");
    assert!(
        !mounts_under(&d.dir).iter().any(|m| m.contains(id)),
        "s3fs is unmounted after the last container"
    );
    Ok(())
}

#[test]
fn docker_volume_is_a_bucket_embedded() -> anyhow::Result<()> {
    docker_lifecycle(Layout::BucketPerVolume, StoreKind::Embedded)
}

#[test]
fn docker_volume_is_a_bucket_etcd() -> anyhow::Result<()> {
    docker_lifecycle(Layout::BucketPerVolume, StoreKind::Etcd)
}

#[test]
fn docker_volume_is_a_prefix_of_one_bucket_embedded() -> anyhow::Result<()> {
    docker_lifecycle(Layout::PrefixPerVolume, StoreKind::Embedded)
}

#[test]
fn docker_volume_is_a_prefix_of_one_bucket_etcd() -> anyhow::Result<()> {
    docker_lifecycle(Layout::PrefixPerVolume, StoreKind::Etcd)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Each bad backend makes `docker volume create` fail with a message naming the field and the
/// cause, and leaves nothing: no volume in Elara, no bucket in S3.
#[test]
fn bad_backends_fail_clearly_and_make_nothing_embedded() -> anyhow::Result<()> {
    bad_backends_fail_clearly_and_make_nothing(StoreKind::Embedded)
}

#[test]
fn bad_backends_fail_clearly_and_make_nothing_etcd() -> anyhow::Result<()> {
    bad_backends_fail_clearly_and_make_nothing(StoreKind::Etcd)
}

fn bad_backends_fail_clearly_and_make_nothing(store: StoreKind) -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let rig = Rig::start(store)?;
    let (s3, d, docker, plugin) = (&rig.s3, &rig.daemon, &rig.engine, &rig.plugin.name);
    let tag = run_tag();
    let port = closed_port();
    let down = format!("http://127.0.0.1:{port}");
    let down_grant = format!("127.0.0.1:{port}");
    let upper_prefix = format!("{}_", tag.to_uppercase());
    let upper_bucket = format!("{}_Data", tag.to_uppercase());
    // (name, config overrides, words the refusal must contain)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(&str, &str)>, Vec<&str>)> = vec![
        (
            "badak",
            vec![("access_key", "NOSUCHACCESSKEY00000")],
            vec!["access_key", "InvalidAccessKeyId"],
        ),
        (
            "badsk",
            vec![("secret_key", "wrong-secret")],
            vec!["secret_key", "SignatureDoesNotMatch"],
        ),
        (
            "badbucket",
            vec![("bucket", &upper_bucket)],
            vec!["bucket", "InvalidBucketName", &upper_bucket],
        ),
        (
            "badprefix",
            vec![("bucket_prefix", &upper_prefix)],
            vec!["bucket_prefix", "InvalidBucketName"],
        ),
        (
            "down",
            vec![("endpoint", &down)],
            vec!["unavailable", "ConnectionRefused"],
        ),
    ];
    // Every backend names its buckets after this run's tag, so a leaked bucket is found below
    // even while other tests make buckets of their own.
    let own_prefix = format!("{tag}-");
    for (name, extra, expect) in &cases {
        let mut config = vec![("bucket_prefix", own_prefix.as_str())];
        config.extend(extra.iter().cloned());
        let mut args = s3.backend_add_args(name, &config);
        if *name == "down" {
            // Grant the dead endpoint, so the refusal comes from the network, not the sandbox.
            args.push("--allow-host".into());
            args.push(down_grant.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.ok(&args)?;
        let err = docker.fails(&[
            "volume",
            "create",
            "-d",
            plugin,
            "-o",
            &format!("backend={name}"),
            &format!("v-{name}"),
        ])?;
        for e in expect {
            assert!(err.contains(e), "backend {name}: the error names {e:?}: {err}");
        }
        // The same through the CLI.
        let err = d.fails(&["volume", "create", &format!("c-{name}"), "--backend", name])?;
        assert!(err.contains(expect[0]), "CLI, backend {name}: {err}");
    }
    // Not granted: the sandbox refuses before any packet leaves, and says how to grant.
    d.ok(&[
        "backend",
        "add",
        "nogrant",
        "--driver",
        "s3",
        "--config",
        &format!("endpoint={}", s3.endpoint),
        "--config",
        &format!("access_key={}", s3.access_key),
        "--config",
        &format!("secret_key={}", s3.secret_key),
    ])?;
    let err = d.fails(&["volume", "create", "c-nogrant", "--backend", "nogrant"])?;
    assert!(
        err.contains("--allow-host"),
        "the error says how to grant the endpoint: {err}"
    );
    // Bad config is refused when the backend is added, naming the key.
    let err = d.fails(&[
        "backend",
        "add",
        "badurl",
        "--driver",
        "s3",
        "--config",
        "endpoint=ftp://x",
        "--config",
        "access_key=a",
        "--config",
        "secret_key=b",
    ])?;
    assert!(err.contains("endpoint"), "{err}");

    assert!(
        d.json(&["volume", "list"])?.as_array().unwrap().is_empty(),
        "no volume was recorded"
    );
    // Only this test's plugin: dockerd finds every plugin spec on the machine, so an unfiltered
    // list also shows a concurrent test's volume while its create runs.
    let ls = docker.ok(&["volume", "ls", "-q", "-f", &format!("driver={plugin}")])?;
    assert!(
        !ls.lines().any(|l| l.starts_with("v-")),
        "docker lists none of them: {ls}"
    );
    let made: Vec<String> = s3
        .buckets()?
        .into_iter()
        .filter(|b| b.to_lowercase().starts_with(&tag))
        .collect();
    assert!(made.is_empty(), "no bucket was made: {made:?}");
    Ok(())
}

/// `elara driver check` passes on the s3 driver against the real server, in both layouts.
#[test]
fn driver_check_conforms_against_rgw() -> anyhow::Result<()> {
    let s3 = S3Server::from_env();
    let wasm = drivers_dir().join("s3.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run scripts/build-drivers.sh",
        wasm.display()
    );
    let tag = run_tag();
    let shared = format!("{tag}-conformance");
    for extra in [
        vec![("bucket_prefix", format!("{tag}-"))],
        vec![("bucket", shared.clone())],
    ] {
        let args = s3.backend_add_args(
            "unused",
            &extra.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
        );
        // backend add NAME --driver s3 [--config ...] --allow-host H → driver check FILE [--config ...] --allow-host H
        let mut cmd = Command::new(elara_bin());
        cmd.args(["driver", "check"]).arg(&wasm).args(&args[5..]);
        let out = cmd.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "driver check failed for {extra:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("CONFORMS") && !stdout.contains("FAIL"), "{stdout}");
    }
    let left: Vec<String> = s3
        .buckets()?
        .into_iter()
        .filter(|b| b.starts_with(&tag) && *b != shared)
        .collect();
    assert!(left.is_empty(), "the suite left buckets: {left:?}");
    assert_eq!(
        s3.objects(&shared, "")?.unwrap_or_default(),
        vec![],
        "the suite left objects in {shared}"
    );
    s3.purge(&tag)?;
    Ok(())
}

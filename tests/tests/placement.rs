//! Placement through the daemon, on both stores: volume types and inline specs filter pools with
//! Cinder's operators, a burst of creates spreads over equal pools (capacity consumed in memory
//! between reports), `scheduler explain` live and offline, and bad specs change nothing.
//! (The scheduler's semantics against Cinder's own code: host/scheduler/tests/cinder_compare.rs.)

use elara_tests::*;
use serde_json::Value;

fn placement(store: StoreKind) -> anyhow::Result<()> {
    let d = Daemon::start(DaemonOpts::new(store))?;

    // A spec that does not parse is refused with its position, and nothing is stored.
    let err = d.fails(&["type", "create", "gold", "--spec", "iops>=(1000"])?;
    assert!(
        err.contains("spec iops") && err.contains("at character"),
        "names the spec and the position: {err}"
    );
    assert_eq!(d.json(&["type", "list"])?.as_array().unwrap().len(), 0);
    let err = d.fails(&["volume", "create", "v0", "--spec", "iops=<in>"])?;
    assert!(err.contains("spec"), "{err}");
    assert_eq!(d.json(&["volume", "list"])?.as_array().unwrap().len(), 0);

    // A type no pool satisfies: no valid pool, each pool named with the filter and why.
    d.ok(&["type", "create", "gold", "--spec", "iops>=1000"])?;
    let err = d.fails(&["volume", "create", "g1", "--type", "gold", "--size", "16M"])?;
    assert!(
        err.contains("no valid pool") && err.contains("local#default") && err.contains("capabilities"),
        "{err}"
    );
    assert_eq!(
        d.json(&["volume", "list"])?.as_array().unwrap().len(),
        0,
        "nothing created"
    );
    let err = d.fails(&["volume", "create", "g1", "--type", "platinum"])?;
    assert!(err.contains("type"), "unknown type names the field: {err}");

    // A type the local pools satisfy (they report type=block), with s== and <or>.
    d.ok(&[
        "type",
        "create",
        "blk",
        "--spec",
        "type=s== block",
        "--spec",
        "driver=<or> local <or> nfs",
    ])?;
    let v = d.json(&["volume", "create", "b1", "--type", "blk", "--size", "16M"])?;
    assert_eq!(v["volume_type"], "blk");
    assert_eq!(v["pool"], "default");
    let err = d.fails(&["type", "delete", "blk"])?;
    assert!(err.contains("b1"), "delete refused while used: {err}");
    let err = d.fails(&["volume", "create", "b2", "--spec", "type=s== file", "--size", "16M"])?;
    assert!(err.contains("no valid pool"), "inline spec filters: {err}");

    // Too big for any pool: the capacity filter says so.
    let err = d.fails(&["volume", "create", "huge", "--size", "100P"])?;
    assert!(err.contains("capacity"), "{err}");

    // Two equal pools: a burst of creates alternates between them (consumed in memory).
    d.ok(&["backend", "add", "local2", "--driver", "local"])?;
    d.ok(&["pool", "refresh"])?;
    let mut backends = vec![];
    for i in 0..4 {
        let v = d.json(&["volume", "create", &format!("s{i}"), "--size", "20G"])?;
        backends.push(v["backend"].as_str().unwrap().to_string());
    }
    assert!(
        backends.windows(2).all(|w| w[0] != w[1]),
        "creates alternate between equal pools: {backends:?}"
    );

    // Live explain: every pool ranked or rejected.
    let e = d.json(&["scheduler", "explain", "--size", "1", "--spec", "type=s== block"])?;
    assert_eq!(e["ranked"].as_array().unwrap().len(), 2, "{e}");
    assert!(e["chosen"].is_string(), "{e}");
    let e = d.json(&[
        "scheduler",
        "explain",
        "--size",
        "1",
        "--backend",
        "local2",
        "--spec",
        "iops>=1",
    ])?;
    assert!(e["chosen"].is_null(), "{e}");
    assert_eq!(e["rejected"][0]["filter"], "capabilities", "{e}");

    for i in 0..4 {
        d.ok(&["volume", "delete", &format!("s{i}")])?;
    }
    d.ok(&["volume", "delete", "b1"])?;
    d.ok(&["type", "delete", "blk"])?;
    d.ok(&["backend", "remove", "local2"])?;
    Ok(())
}

#[test]
fn placement_embedded() -> anyhow::Result<()> {
    placement(StoreKind::Embedded)
}

#[test]
fn placement_etcd() -> anyhow::Result<()> {
    placement(StoreKind::Etcd)
}

/// Offline explain over pools in Cinder's vocabulary: no daemon involved.
#[test]
fn explain_offline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pools.json");
    std::fs::write(
        &file,
        r#"[
          {"name": "thick-small", "total_capacity_gb": 100, "free_capacity_gb": 5, "reserved_percentage": 0,
           "thick_provisioning_support": true, "iops": 500},
          {"name": "thin-big", "total_capacity_gb": 1000, "free_capacity_gb": 800, "reserved_percentage": 10,
           "thin_provisioning_support": true, "max_over_subscription_ratio": "auto", "iops": 5000},
          {"name": "cloud", "total_capacity_gb": "infinite", "free_capacity_gb": "infinite", "iops": 2000}
        ]"#,
    )?;
    let out = std::process::Command::new(elara_bin())
        .args(["scheduler", "explain", "--pools"])
        .arg(&file)
        .args(["--size", "10", "--spec", "iops=>= 1000", "-o", "json"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: Value = serde_json::from_slice(&out.stdout)?;
    let rejected: Vec<_> = e["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pool"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rejected, vec!["thick-small"], "{e}");
    assert_eq!(e["ranked"].as_array().unwrap().len(), 2, "{e}");
    assert!(e["chosen"].is_string(), "{e}");

    let out = std::process::Command::new(elara_bin())
        .args(["scheduler", "explain", "--pools"])
        .arg(&file)
        .args(["--size", "10", "--spec", "iops=>= 1000 <or>"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iops") && err.contains("character"),
        "the rejection names the spec and position: {err}"
    );
    Ok(())
}

//! Two daemons on one etcd, no leader: 50 parallel creates of the same 10 names from both must
//! leave exactly 10 volumes, in the store and on the backends.

use std::collections::BTreeSet;
use std::sync::Arc;

use elara_tests::*;

#[test]
fn parallel_creates_from_two_daemons() -> anyhow::Result<()> {
    let a = Arc::new(Daemon::start(DaemonOpts::new(StoreKind::Etcd))?);
    let b = Arc::new(a.start_peer("node2")?);
    let names: Vec<String> = (0..10).map(|i| format!("shared{i}")).collect();
    let mut threads = vec![];
    for i in 0..50 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        let name = names[i % 10].clone();
        threads.push(std::thread::spawn(move || {
            d.cli(&["volume", "create", &name, "--size", "16M"])
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in threads {
        let out = t.join().expect("thread")?;
        if out.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("already exists") || err.contains("concurrently"),
                "a losing create says why: {err}"
            );
            refused += 1;
        }
    }
    assert_eq!((ok, refused), (10, 40), "exactly one create per name wins");

    for d in [&a, &b] {
        let list = d.json(&["volume", "list"])?;
        let seen: BTreeSet<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            seen,
            names.iter().cloned().collect(),
            "both daemons see the same 10 volumes"
        );
        assert!(d.json(&["op", "list"])?.as_array().unwrap().is_empty(), "no op left");
    }
    let list = a.json(&["volume", "list"])?;
    let ids: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let mut images = BTreeSet::new();
    for d in [&a, &b] {
        if let Ok(rd) = std::fs::read_dir(d.pool_dir("local").join("volumes")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(id) = n.strip_suffix(".img") {
                    images.insert(id.to_string());
                }
            }
        }
    }
    assert_eq!(images, ids, "exactly the 10 volumes exist on the backends");

    // Each daemon serves any request for cluster-wide state; node-local volumes are deleted on their node.
    for v in list.as_array().unwrap() {
        let owner = if v["node"] == "node1" { &a } else { &b };
        owner.ok(&["volume", "delete", v["name"].as_str().unwrap()])?;
    }
    assert!(b.json(&["volume", "list"])?.as_array().unwrap().is_empty());
    Ok(())
}

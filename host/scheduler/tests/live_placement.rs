//! The live path the daemon takes (crate docs, "Live placement"): driver reports in bytes → pools, a burst of
//! creates spreading through in-memory consumption, stale pools and down nodes rejected with reasons, a failed
//! create given back, and bad reports refused naming pool and field.

use std::time::{Duration, SystemTime};

use elara_scheduler::{ByteCapacity, Filter, PoolError, PoolReport, PoolState, Request, Scheduler, parse_spec_arg};

const GIB: u64 = 1 << 30;

fn report(backend: &str, name: &str, total_gib: u64, free_gib: u64, node: Option<&str>) -> PoolReport {
    PoolReport {
        name: name.into(),
        backend: backend.into(),
        driver: "local".into(),
        node: node.map(String::from),
        availability_zone: Some("az1".into()),
        total: ByteCapacity::Bytes(total_gib * GIB),
        free: ByteCapacity::Bytes(free_gib * GIB),
        provisioned_bytes: (total_gib - free_gib) * GIB,
        allocated_bytes: 0,
        reserved_percentage: 0,
        thin_provisioning: false,
        thick_provisioning: true,
        max_over_subscription_ratio: String::new(),
        capabilities: vec![("iops".into(), "5000".into()), ("media".into(), "ssd".into())],
        updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
    }
}

fn pools() -> Vec<PoolState> {
    let mut pools: Vec<PoolState> = [
        report("node1-local", "vg0", 100, 100, Some("node1")),
        report("node2-local", "vg0", 100, 80, Some("node2")),
        report("shared-nfs", "export", 1000, 60, None),
    ]
    .into_iter()
    .map(|r| PoolState::from_report(r).expect("valid report"))
    .collect();
    pools.sort_by_key(PoolState::id);
    pools
}

fn scheduler_at(secs: u64) -> Scheduler {
    Scheduler {
        max_pool_age: Some(Duration::from_secs(30)),
        now: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        ..Scheduler::default()
    }
}

fn request(size: f64, spec_args: &[&str]) -> Request {
    let specs: Vec<(String, String)> = spec_args.iter().map(|a| parse_spec_arg(a).unwrap()).collect();
    Request::new(size).with_specs(&specs).unwrap()
}

#[test]
fn a_burst_spreads_before_the_next_report() {
    let mut pools = pools();
    let s = scheduler_at(1_010);
    let r = request(15.0, &["iops>=1000", "media=ssd"]);
    let chosen: Vec<String> = (0..6)
        .map(|_| s.place_and_consume(&mut pools, &r).unwrap().pool)
        .collect();
    // Free: node1 100, node2 80, nfs 60 → the most free wins each time, then is charged 15 GB
    // (node1 85, 70, node2 65, node1 55, node2 50: then nfs's 60 is the most).
    assert_eq!(
        chosen,
        [
            "node1-local#vg0",
            "node1-local#vg0",
            "node2-local#vg0",
            "node1-local#vg0",
            "node2-local#vg0",
            "shared-nfs#export"
        ]
    );
    let node1 = pools.iter().find(|p| p.id() == "node1-local#vg0").unwrap();
    assert_eq!(node1.allocated_capacity_gb, 45.0);
    // The capabilities filter still sees the figures as reported (Cinder's semantics).
    assert_eq!(node1.capability("free_capacity_gb").unwrap().as_f64(), Some(100.0));

    // A failed create gives its capacity back.
    let p = s.place_and_consume(&mut pools, &r).unwrap();
    let before = pools[p.index].free_capacity_gb.gb().unwrap();
    pools[p.index].consume(-15.0);
    assert_eq!(pools[p.index].free_capacity_gb.gb().unwrap(), before + 15.0);
}

#[test]
fn stale_pools_and_down_nodes_are_rejected_with_reasons() {
    let mut pools = pools();
    pools[0].updated_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(900));
    let mut s = scheduler_at(1_010);
    s.down_nodes.insert("node2".into());
    let e = s.explain(&pools, &request(1.0, &[]));
    assert_eq!(e.chosen.as_deref(), Some("shared-nfs#export"));
    let rejected: Vec<(&str, Filter, &str)> = e
        .rejected
        .iter()
        .map(|r| (r.pool.as_str(), r.filter, r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("node1-local#vg0", Filter::Stale, "last report 110s ago (max 30s)"),
            ("node2-local#vg0", Filter::NodeDown, "node node2 is down"),
        ]
    );
    // Only node1's pools and unbound ones for a volume on node1; a size nothing fits lists every pool.
    let mut r = request(70.0, &[]);
    r.node = Some("node1".into());
    let err = s.place(&pools, &r).unwrap_err().to_string();
    assert!(err.contains("node1-local#vg0: stale"), "{err}");
    assert!(err.contains("node2-local#vg0: node_down"), "{err}");
    assert!(
        err.contains("shared-nfs#export: capacity: thick pool: requested 70 GB, free 60 GB"),
        "{err}"
    );
}

#[test]
fn bad_reports_are_refused_naming_pool_and_field() {
    let mut r = report("b", "p", 10, 5, None);
    r.reserved_percentage = 101;
    assert_eq!(
        PoolState::from_report(r).unwrap_err(),
        PoolError::Field {
            pool: "p".into(),
            field: "reserved-percentage".into(),
            reason: "must be 0-100".into()
        }
    );
    let mut r = report("b", "p", 10, 5, None);
    r.max_over_subscription_ratio = "lots".into();
    assert!(
        PoolState::from_report(r)
            .unwrap_err()
            .to_string()
            .contains("pool p: field `max_over_subscription_ratio`")
    );
    let mut r = report("b", "p", 10, 5, None);
    r.capabilities.push(("total_capacity_gb".into(), "1".into()));
    assert!(
        PoolState::from_report(r)
            .unwrap_err()
            .to_string()
            .contains("is a pool figure")
    );
}

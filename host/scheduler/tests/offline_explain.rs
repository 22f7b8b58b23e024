//! Offline explain (`elara scheduler explain --pools FILE --size N --spec KEY=VALUE … --output json`) through the
//! library call the CLI makes: the JSON shape, Cinder's pool vocabulary, refusals that name the field or the
//! position, and "no pool fits" listing every pool.

use elara_scheduler::{Error, Filter, PoolError, Scheduler, SpecError, explain_offline, explain_offline_args};
use serde_json::{Value, json};

/// Pools as an operator would write them, in Cinder's capability vocabulary.
const POOLS: &str = r#"[
  {"name": "fast", "total_capacity_gb": 1000, "free_capacity_gb": 700, "allocated_capacity_gb": 300,
   "reserved_percentage": 10, "thin_provisioning_support": false, "thick_provisioning_support": true,
   "iops": 20000, "storage_protocol": "iSCSI", "compression": "<is> True"},
  {"name": "thin", "total_capacity_gb": 500, "free_capacity_gb": 100, "provisioned_capacity_gb": 2000,
   "thin_provisioning_support": true, "max_over_subscription_ratio": "auto", "iops": "3000",
   "storage_protocol": "NFS"},
  {"name": "cloud", "total_capacity_gb": "infinite", "free_capacity_gb": "unknown", "iops": 1000,
   "storage_protocol": ["iSCSI", "NFS"]},
  {"name": "tiny", "total_capacity_gb": 20, "free_capacity_gb": 5, "iops": 50000}
]"#;

fn explain(size: f64, specs: &[&str]) -> Value {
    let e = explain_offline_args(POOLS, size, specs, &Scheduler::default()).expect("explain");
    serde_json::to_value(&e).expect("json")
}

#[test]
fn prints_the_documented_json_shape() {
    let v = explain(10.0, &[]);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["chosen", "ranked", "rejected"]);
    // `tiny` has 5 GB free: rejected by capacity, with the figures in the reason.
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(v["rejected"][0]["pool"], "tiny");
    assert_eq!(v["rejected"][0]["filter"], "capacity");
    let reason = v["rejected"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("requested 10 GB") && reason.contains("free 5 GB"),
        "{reason}"
    );
    let ranked = v["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    for r in ranked {
        let o = r.as_object().unwrap();
        assert_eq!(o.keys().map(String::as_str).collect::<Vec<_>>(), ["pool", "weight"]);
    }
    // Best first: weights never increase; the chosen pool is the first ranked.
    let weights: Vec<f64> = ranked.iter().map(|r| r["weight"].as_f64().unwrap()).collect();
    assert!(weights.windows(2).all(|w| w[0] >= w[1]), "{weights:?}");
    assert_eq!(v["chosen"], ranked[0]["pool"]);
    // `thin` ("auto": 1 + 2000 / (400 + 1) ≈ 5.99; 500 × 5.99 − 2000 ≈ 994 GB virtual free) outweighs `fast`
    // (free 700 − 0, minus provisioned 300: 600 GB after 100 reserved); infinite/unknown weighs least.
    assert_eq!(v["chosen"], "thin");
    assert_eq!(ranked[2]["pool"], "cloud");
}

#[test]
fn specs_in_cinder_syntax_filter_pools() {
    let v = explain(10.0, &["iops=>= 5000", "storage_protocol=<in> iSCSI"]);
    assert_eq!(v["chosen"], "fast");
    let rejected: Vec<(&str, &str)> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["pool"].as_str().unwrap(), r["filter"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("thin", "capabilities"),
            ("cloud", "capabilities"),
            ("tiny", "capacity")
        ]
    );
    // The shorthand of the CLI examples, `iops>=1000`, is `iops` `>= 1000`; `<or>`, `s==`, `<is>` too.
    assert_eq!(explain(10.0, &["iops>=25000"])["chosen"], Value::Null);
    assert_eq!(explain(1.0, &["iops>=25000"])["chosen"], "tiny");
    assert_eq!(explain(10.0, &["storage_protocol=<or> NFS <or> FC"])["chosen"], "thin");
    assert_eq!(explain(10.0, &["storage_protocol=s== iSCSI"])["chosen"], "fast");
    // A capability whose text is itself `<is> True` is matched literally by a literal spec.
    assert_eq!(explain(10.0, &["compression=<is> True"])["chosen"], Value::Null);
    // Scoped keys other than `capabilities:` are not the capabilities filter's business.
    assert_eq!(
        explain(10.0, &["capabilities:iops=<= 1000", "vendor:x=anything"])["chosen"],
        "cloud"
    );
}

#[test]
fn thick_request_uses_real_free_space() {
    // Thick: `thin` is weighed by min(free, total − reserved − provisioned) = min(100, −1500) → rejected.
    let v = explain(50.0, &["provisioning:type=thick"]);
    assert_eq!(v["chosen"], "fast");
    assert!(
        v["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["pool"] == "thin" && r["filter"] == "capacity")
    );
}

#[test]
fn no_pool_fits_lists_every_pool() {
    // `cloud` has unknown free space, which passes the capacity filter (as in Cinder): its `iops` rejects it.
    let e = explain_offline_args(POOLS, 100_000.0, &["iops=>= 1001"], &Scheduler::default()).unwrap();
    assert_eq!(e.chosen, None);
    assert!(e.ranked.is_empty());
    let filters: Vec<(&str, Filter)> = e.rejected.iter().map(|r| (r.pool.as_str(), r.filter)).collect();
    assert_eq!(
        filters,
        [
            ("fast", Filter::Capacity),
            ("thin", Filter::Capacity),
            ("cloud", Filter::Capabilities),
            ("tiny", Filter::Capacity)
        ]
    );
    let err = e.chosen_or_error(100_000.0).unwrap_err().to_string();
    assert!(err.starts_with("no valid pool for a 100000 GB volume:"), "{err}");
    for pool in ["fast", "thin", "cloud", "tiny"] {
        assert!(err.contains(&format!("\n  {pool}: ")), "{pool} missing from: {err}");
    }
    // Without the spec, the pool of unknown capacity takes it.
    let e = explain_offline_args(POOLS, 100_000.0, &[] as &[&str], &Scheduler::default()).unwrap();
    assert_eq!(e.chosen_or_error(100_000.0).unwrap(), "cloud");
}

#[test]
fn a_bad_expression_is_refused_with_its_position() {
    for (arg, position, why) in [
        ("iops=>= lots", 3, "is not a number"),
        ("iops=>=1000", 2, "must be followed by a space"),
        ("ssd=<is> maybe", 5, "is not a boolean"),
        ("tier=<or> a b", 7, "expected `<or>`"),
        ("tier=<xor> a", 0, "unknown operator"),
        ("iops=>=", 2, "needs an operand"),
    ] {
        let err = explain_offline_args(POOLS, 1.0, &[arg], &Scheduler::default()).unwrap_err();
        let Error::Spec(SpecError::Parse { error, .. }) = &err else {
            panic!("{arg}: not a parse error: {err:?}")
        };
        assert_eq!(error.position, position, "{arg}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(why) && text.contains(&format!("at character {position}")),
            "{arg}: {text}"
        );
        assert!(text.starts_with("spec `"), "{arg}: names the spec: {text}");
    }
    let err = explain_offline_args(POOLS, 1.0, &["no-equals"], &Scheduler::default()).unwrap_err();
    assert!(err.to_string().contains("has no `=`"), "{err}");
}

#[test]
fn bad_pools_are_refused_naming_the_pool_and_field() {
    let cases = [
        (
            r#"[{"name": "p", "total_capacity_gb": "lots"}]"#,
            "pool p: field `total_capacity_gb`",
        ),
        (
            r#"[{"name": "p", "reserved_percentage": 150}]"#,
            "pool p: field `reserved_percentage`",
        ),
        (
            r#"[{"name": "p", "max_over_subscription_ratio": "x"}]"#,
            "field `max_over_subscription_ratio`",
        ),
        (
            r#"[{"name": "p", "thin_provisioning_support": "yes"}]"#,
            "field `thin_provisioning_support`",
        ),
        (r#"[{"total_capacity_gb": 1}]"#, "field `name`"),
        (r#"{"pools": 3}"#, "expected an array of pools"),
        ("[1]", "pool #0 is not an object"),
        ("not json", "pools JSON"),
    ];
    for (json, expected) in cases {
        let err = explain_offline(json, 1.0, &[], &Scheduler::default()).unwrap_err();
        assert!(matches!(err, Error::Pools(_)), "{json}: {err:?}");
        assert!(err.to_string().contains(expected), "{json}: {err}");
    }
    let err = explain_offline(POOLS, -1.0, &[], &Scheduler::default()).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");
    assert!(matches!(
        explain_offline("[1]", 1.0, &[], &Scheduler::default()),
        Err(Error::Pools(PoolError::Json(_)))
    ));
}

#[test]
fn reads_cinder_get_pools_output() {
    // `GET /scheduler-stats/get_pools?detail=true` as Cinder answers it.
    let dump = json!({"pools": [
        {"name": "probe@multi#p1", "capabilities": {"pool_name": "p1", "total_capacity_gb": 100,
         "free_capacity_gb": 90, "reserved_percentage": 0, "volume_backend_name": "multi", "timestamp": "2024-01-01"}},
        {"name": "probe@fake#fake", "capabilities": {"pool_name": "fake", "total_capacity_gb": "infinite",
         "free_capacity_gb": "infinite", "volume_backend_name": "fake"}}
    ]});
    let e = explain_offline_args(
        &dump.to_string(),
        10.0,
        &["volume_backend_name=multi"],
        &Scheduler::default(),
    )
    .unwrap();
    assert_eq!(e.chosen.as_deref(), Some("probe@multi#p1"));
    assert_eq!(e.rejected[0].pool, "probe@fake#fake");
    assert_eq!(e.rejected[0].filter, Filter::Capabilities);
}

//! Elara's scheduler against OpenStack Cinder 29.0.0's real filters and weighers, run in process by
//! tests/scheduler/cinder_compare.py on the same pools and requests.
//!
//! Needs `ELARA_CINDER_PY` (the venv python: `export ELARA_CINDER_PY=$(scripts/scheduler-cinder-venv.sh)`);
//! without it the test says it is skipped and why (or fails, with `ELARA_REQUIRE_CINDER=1`).
//!
//! For every case it compares: the chosen pool, the set of pools passing the filters, every weight (1e-6), and
//! for burst cases the pool chosen by each placement of the burst (with in-memory consumption in between).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use elara_scheduler::{Capacity, Filter, OverSubscription, PoolState, Request, Scheduler, Weigher, load_pools_json};
use serde_json::{Value, json};

use common::cinder;

/// One case, in the harness's input format.
fn case(name: &str, pools: Value, size: f64, specs: Value) -> Value {
    json!({"name": name, "pools": pools, "size": size, "specs": specs})
}

fn with(mut c: Value, key: &str, value: Value) -> Value {
    c[key] = value;
    c
}

/// The three pools of the Cinder recipe's sched_inproc.py.
fn recipe_pools() -> Value {
    json!([
        {"name": "p1", "total_capacity_gb": 1024, "free_capacity_gb": 1024, "reserved_percentage": 10,
         "provisioned_capacity_gb": 0, "thin_provisioning_support": false, "volume_backend_name": "lvm"},
        {"name": "p2", "total_capacity_gb": 2048, "free_capacity_gb": 300, "reserved_percentage": 10,
         "provisioned_capacity_gb": 1748, "thin_provisioning_support": true, "thick_provisioning_support": false,
         "max_over_subscription_ratio": 1.5, "volume_backend_name": "lvm"},
        {"name": "p3", "total_capacity_gb": 256, "free_capacity_gb": 512, "reserved_percentage": 0,
         "provisioned_capacity_gb": 100, "thin_provisioning_support": false, "volume_backend_name": "fast"}
    ])
}

/// Pools with capabilities of every JSON type, for the operator cases.
fn capability_pools() -> Value {
    json!([
        {"name": "gold", "total_capacity_gb": 1000, "free_capacity_gb": 900, "iops": 5000, "tier": "gold",
         "ssd": true, "replication": "True", "protocols": ["iSCSI", "NFS"], "zone": "rack-1-a",
         "qos": {"max": "high"}, "ratio": 1.5, "label": "fast disks", "count": 1},
        {"name": "silver", "total_capacity_gb": 800, "free_capacity_gb": 700, "iops": "3000", "tier": "silver",
         "ssd": "yes", "replication": "off", "protocols": ["NFS"], "zone": "rack-2-b",
         "qos": {"max": "low"}, "ratio": "2.5", "label": "", "count": 0},
        {"name": "bronze", "total_capacity_gb": 600, "free_capacity_gb": 500, "iops": "n/a", "tier": "bronze",
         "ssd": false, "replication": "0", "protocols": "FC", "zone": "rack-1-c", "ratio": 1.0, "count": 1.0},
        {"name": "bare", "total_capacity_gb": 400, "free_capacity_gb": 300, "tier": "Gold", "iops": 10000}
    ])
}

fn named_cases() -> Vec<Value> {
    let mut cases = Vec::new();
    let r = recipe_pools();
    // Recipe (sched_inproc.py) requests.
    cases.push(case("recipe-1", r.clone(), 1.0, json!({})));
    cases.push(case(
        "recipe-thick",
        r.clone(),
        1.0,
        json!({"provisioning:type": "thick"}),
    ));
    cases.push(case(
        "recipe-backend-name",
        r.clone(),
        1.0,
        json!({"volume_backend_name": "fast"}),
    ));
    cases.push(case("recipe-700", r.clone(), 700.0, json!({})));
    cases.push(case("recipe-2000-nofit", r.clone(), 2000.0, json!({})));
    cases.push(with(
        case("recipe-burst", r.clone(), 100.0, json!({})),
        "burst",
        json!([500, 100, 100, 300, 50, 400, 400]),
    ));

    // Thin vs thick.
    let thin = json!([
        {"name": "thin", "total_capacity_gb": 100, "free_capacity_gb": 10, "provisioned_capacity_gb": 150,
         "thin_provisioning_support": true, "max_over_subscription_ratio": 2.0},
        {"name": "thick", "total_capacity_gb": 100, "free_capacity_gb": 60, "provisioned_capacity_gb": 40,
         "thick_provisioning_support": true},
        {"name": "both", "total_capacity_gb": 100, "free_capacity_gb": 30, "provisioned_capacity_gb": 70,
         "thin_provisioning_support": true, "thick_provisioning_support": true, "max_over_subscription_ratio": 3.0}
    ]);
    for size in [5.0, 20.0, 45.0, 50.0, 61.0, 230.0] {
        cases.push(case(&format!("thin-{size}"), thin.clone(), size, json!({})));
        cases.push(case(
            &format!("thick-req-{size}"),
            thin.clone(),
            size,
            json!({"provisioning:type": "thick"}),
        ));
        cases.push(case(
            &format!("thin-req-{size}"),
            thin.clone(),
            size,
            json!({"provisioning:type": "thin"}),
        ));
    }

    // Reserved percentage: floor(total * pct / 100), fractional totals and percentages.
    let reserved = json!([
        {"name": "r10", "total_capacity_gb": 1023.5, "free_capacity_gb": 1023.5, "reserved_percentage": 10},
        {"name": "r33", "total_capacity_gb": 100, "free_capacity_gb": 100, "reserved_percentage": 33.3},
        {"name": "r0", "total_capacity_gb": 10.75, "free_capacity_gb": 10.125},
        {"name": "r-thin", "total_capacity_gb": 99.99, "free_capacity_gb": 50, "reserved_percentage": 15,
         "provisioned_capacity_gb": 1000, "thin_provisioning_support": true, "max_over_subscription_ratio": 12.5}
    ]);
    for size in [10.0, 10.125, 10.13, 66.0, 67.0, 68.0, 921.0, 921.5, 922.0, 0.0] {
        cases.push(case(&format!("reserved-{size}"), reserved.clone(), size, json!({})));
    }

    // Over-subscription: the provisioned ratio, invalid ratios (< 1), ratios as text, 0 meaning the default.
    let over = json!([
        {"name": "r1.5", "total_capacity_gb": 1000, "free_capacity_gb": 200, "provisioned_capacity_gb": 1400,
         "thin_provisioning_support": true, "max_over_subscription_ratio": 1.5},
        {"name": "r0.8", "total_capacity_gb": 1000, "free_capacity_gb": 900, "provisioned_capacity_gb": 10,
         "thin_provisioning_support": true, "max_over_subscription_ratio": 0.8},
        {"name": "rtext", "total_capacity_gb": 500, "free_capacity_gb": 100, "provisioned_capacity_gb": 900,
         "thin_provisioning_support": true, "max_over_subscription_ratio": "2.5"},
        {"name": "rzero", "total_capacity_gb": 100, "free_capacity_gb": 5, "provisioned_capacity_gb": 1500,
         "thin_provisioning_support": true, "max_over_subscription_ratio": 0},
        {"name": "rdefault", "total_capacity_gb": 50, "free_capacity_gb": 5, "allocated_capacity_gb": 700,
         "thin_provisioning_support": true},
        {"name": "r0.8-thick", "total_capacity_gb": 1000, "free_capacity_gb": 900, "provisioned_capacity_gb": 10,
         "max_over_subscription_ratio": 0.8}
    ]);
    for size in [1.0, 50.0, 99.0, 100.0, 101.0, 300.0, 350.0, 500.0, 890.0] {
        cases.push(case(&format!("oversub-{size}"), over.clone(), size, json!({})));
        cases.push(case(
            &format!("oversub-thick-{size}"),
            over.clone(),
            size,
            json!({"provisioning:type": "thick"}),
        ));
    }

    // `auto`: 20 while nothing is provisioned, else 1 + provisioned / (used + 1); frozen between reports.
    let auto = json!([
        {"name": "auto0", "total_capacity_gb": 100, "free_capacity_gb": 100, "provisioned_capacity_gb": 0,
         "thin_provisioning_support": true, "max_over_subscription_ratio": "auto"},
        {"name": "auto1", "total_capacity_gb": 1000, "free_capacity_gb": 400, "provisioned_capacity_gb": 1800,
         "thin_provisioning_support": true, "max_over_subscription_ratio": "auto"},
        {"name": "auto-alloc", "total_capacity_gb": 500, "free_capacity_gb": 100, "allocated_capacity_gb": 450,
         "thin_provisioning_support": true, "max_over_subscription_ratio": "auto"},
        {"name": "auto-thick", "total_capacity_gb": 300, "free_capacity_gb": 250, "provisioned_capacity_gb": 50,
         "max_over_subscription_ratio": "auto"}
    ]);
    for size in [1.0, 100.0, 240.0, 250.0, 600.0, 1500.0, 1700.0, 1999.0, 2100.0] {
        cases.push(case(&format!("auto-{size}"), auto.clone(), size, json!({})));
    }
    cases.push(with(
        case("auto-burst", auto.clone(), 200.0, json!({})),
        "burst",
        json!([200, 200, 200, 200, 200, 200, 200, 200]),
    ));

    // Every operator, against capabilities of every type.
    let cp = capability_pools();
    let ops: &[(&str, &str)] = &[
        ("iops", "= 3000"),
        ("iops", "= 5000.5"),
        ("iops", "== 5000"),
        ("iops", "== 3000"),
        ("iops", "!= 5000"),
        ("iops", ">= 4000"),
        ("iops", "<= 4000"),
        ("iops", ">= 1e3"),
        ("iops", "<= 1_000_000"),
        ("iops", ">= -inf"),
        ("iops", "!= nan"),
        ("ratio", "== 2.5"),
        ("ratio", ">= 1.5"),
        ("count", "= 1"),
        ("ssd", "= 1"),
        ("tier", "s== gold"),
        ("tier", "s!= gold"),
        ("tier", "s< m"),
        ("tier", "s<= gold"),
        ("tier", "s> bronze"),
        ("tier", "s>= silver"),
        ("tier", "s< gold"),
        ("ssd", "s!= True"),
        ("iops", "s!= 5000"),
        ("zone", "<in> rack-1"),
        ("zone", "<in> 2-b"),
        ("protocols", "<in> NFS"),
        ("protocols", "<in> iSC"),
        ("qos", "<in> max"),
        ("ssd", "<is> True"),
        ("ssd", "<is> False"),
        ("ssd", "<is> yes"),
        ("ssd", "<is> 0"),
        ("replication", "<is> true"),
        ("replication", "<is> off"),
        ("count", "<is> True"),
        ("count", "<is> False"),
        ("label", "<is> False"),
        ("tier", "<or> gold <or> silver"),
        ("tier", "<or> Gold"),
        ("tier", "<or> bronze <or> gold <or> nothing"),
        ("protocols", "<or> FC <or> NFS"),
        ("tier", "gold"),
        ("tier", " gold"),
        ("label", "fast disks"),
        ("label", ""),
        ("protocols", "NFS"),
        ("capabilities:tier", "s== silver"),
        ("capabilities:qos:max", "s== high"),
        ("capabilities:qos:min", "s== high"),
        ("capabilities:tier:x", "gold"),
        ("vendor:anything", "ignored"),
        ("provisioning:type", "thin"),
        ("qos:iops", ">= 1"),
        ("missing", "<is> False"),
        ("capabilities:missing", "x"),
        ("thin_provisioning_support", "<is> False"),
        ("pool_name", "<or> gold <or> bare"),
        ("total_capacity_gb", ">= 700"),
        ("free_capacity_gb", "<= 500"),
    ];
    for (i, (k, v)) in ops.iter().enumerate() {
        cases.push(case(&format!("op-{i:02} {k}={v}"), cp.clone(), 10.0, json!({ *k: *v })));
    }
    // Elara's `<` and `>` (oslo specs_matcher's, which Cinder 29 lacks: it compares `< 4000` literally) against
    // Cinder's equivalent pair of specs on the same capability (`iops` and `capabilities:iops` name the same one).
    for (k, ours, theirs_1, theirs_2) in [
        ("iops", "< 4000", "<= 4000", "!= 4000"),
        ("iops", "< 3000", "<= 3000", "!= 3000"),
        ("iops", "> 3000", ">= 3000", "!= 3000"),
        ("iops", "> 10000", ">= 10000", "!= 10000"),
        ("ratio", "< 2.5", "<= 2.5", "!= 2.5"),
        ("count", "> 0", ">= 0", "!= 0"),
    ] {
        let mut c = case(
            &format!("ext {k}={ours}"),
            cp.clone(),
            10.0,
            json!({ k: theirs_1, format!("capabilities:{k}"): theirs_2 }),
        );
        c["elara_specs"] = json!({ k: ours });
        cases.push(c);
    }
    cases.push(case(
        "ops-combined",
        cp.clone(),
        10.0,
        json!({"iops": ">= 3000", "tier": "<or> gold <or> silver", "capabilities:ssd": "<is> True"}),
    ));

    // No fit: every pool rejected (capacity and capabilities).
    cases.push(case("nofit-size", cp.clone(), 5000.0, json!({})));
    cases.push(case("nofit-spec", cp.clone(), 1.0, json!({"tier": "platinum"})));

    // Infinite / unknown capacities, both multiplier signs.
    let inf = json!([
        {"name": "inf", "total_capacity_gb": "infinite", "free_capacity_gb": "infinite"},
        {"name": "unk", "total_capacity_gb": "unknown", "free_capacity_gb": "unknown"},
        {"name": "free-inf", "total_capacity_gb": 100, "free_capacity_gb": "infinite", "reserved_percentage": 50},
        {"name": "total-unk-res0", "total_capacity_gb": "unknown", "free_capacity_gb": 10},
        {"name": "total-inf-res5", "total_capacity_gb": "infinite", "free_capacity_gb": 10, "reserved_percentage": 5},
        {"name": "small", "total_capacity_gb": 100, "free_capacity_gb": 50},
        {"name": "big", "total_capacity_gb": 1000, "free_capacity_gb": 900},
        {"name": "zero-total", "total_capacity_gb": 0, "free_capacity_gb": 10},
        {"name": "no-figures"}
    ]);
    for m in [1.0, -1.0, 0.0, 3.5] {
        for size in [1.0, 60.0, 1000.0] {
            cases.push(with(
                case(&format!("infinite-m{m}-{size}"), inf.clone(), size, json!({})),
                "capacity_weight_multiplier",
                json!(m),
            ));
        }
    }
    let only_inf = json!([
        {"name": "inf", "total_capacity_gb": "infinite", "free_capacity_gb": "infinite"},
        {"name": "unk", "total_capacity_gb": "unknown", "free_capacity_gb": "unknown"}
    ]);
    cases.push(case("all-infinite-positive", only_inf.clone(), 1.0, json!({})));
    // Cinder raises here (max() of an empty list); Elara weighs them all 0 — see `cinder_would_raise`.
    cases.push(with(
        case("all-infinite-negative", only_inf, 1.0, json!({})),
        "capacity_weight_multiplier",
        json!(-1.0),
    ));
    cases.push(with(
        case("infinite-burst", inf.clone(), 30.0, json!({})),
        "burst",
        json!([30, 30, 30, 30, 30]),
    ));

    // Ties: equal weights keep the input order; the first wins.
    let same = json!({"total_capacity_gb": 100, "free_capacity_gb": 80});
    let tie = |names: &[&str]| -> Value {
        Value::Array(
            names
                .iter()
                .map(|n| {
                    let mut p = same.clone();
                    p["name"] = json!(n);
                    p
                })
                .collect(),
        )
    };
    cases.push(case("tie-abc", tie(&["a", "b", "c"]), 10.0, json!({})));
    cases.push(case("tie-cba", tie(&["c", "b", "a"]), 10.0, json!({})));
    cases.push(with(
        case("tie-negative", tie(&["b", "c", "a"]), 10.0, json!({})),
        "capacity_weight_multiplier",
        json!(-1.0),
    ));
    let mut partial = tie(&["x", "y"]);
    partial.as_array_mut().unwrap().insert(
        0,
        json!({"name": "w", "total_capacity_gb": 100, "free_capacity_gb": 40}),
    );
    partial
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "z", "total_capacity_gb": 100, "free_capacity_gb": 80}));
    cases.push(case("tie-partial", partial, 10.0, json!({})));
    cases.push(with(
        case("tie-burst", tie(&["a", "b", "c"]), 10.0, json!({})),
        "burst",
        json!([10, 10, 10, 10, 10, 10]),
    ));

    // Negative multiplier: stacking.
    for m in [-1.0, -0.5, -10.0] {
        cases.push(with(
            case(&format!("stack-m{m}"), r.clone(), 1.0, json!({})),
            "capacity_weight_multiplier",
            json!(m),
        ));
        cases.push(with(
            with(
                case(&format!("stack-burst-m{m}"), thin.clone(), 5.0, json!({})),
                "capacity_weight_multiplier",
                json!(m),
            ),
            "burst",
            json!([5, 5, 5, 5]),
        ));
    }

    // Allocated-capacity weigher, alone and with the capacity weigher.
    let alloc = json!([
        {"name": "a100", "total_capacity_gb": 1000, "free_capacity_gb": 500, "allocated_capacity_gb": 100},
        {"name": "a10", "total_capacity_gb": 1000, "free_capacity_gb": 200, "allocated_capacity_gb": 10},
        {"name": "a500", "total_capacity_gb": 1000, "free_capacity_gb": 900, "allocated_capacity_gb": 500}
    ]);
    for (w, am) in [
        (json!(["allocated_capacity"]), -1.0),
        (json!(["allocated_capacity"]), 1.0),
        (json!(["capacity", "allocated_capacity"]), -1.0),
        (json!(["allocated_capacity", "capacity"]), 2.0),
    ] {
        let c = case(&format!("alloc-{w}-{am}"), alloc.clone(), 10.0, json!({}));
        let c = with(
            with(c, "weighers", w),
            "allocated_capacity_weight_multiplier",
            json!(am),
        );
        cases.push(with(c, "burst", json!([50, 50, 50, 50])));
    }
    cases
}

/// A small deterministic generator (xorshift64*), so the random cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A number with two decimals in [0, max).
    fn cents(&mut self, max: u64) -> f64 {
        self.below(max * 100) as f64 / 100.0
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

fn random_pool(rng: &mut Rng, i: usize) -> Value {
    let mut p = json!({"name": format!("p{i}")});
    let total = if rng.chance(4) {
        json!(rng.pick(&["infinite", "unknown"]))
    } else if rng.chance(3) {
        json!(0)
    } else {
        json!(rng.cents(2000))
    };
    let free = if rng.chance(4) {
        json!(rng.pick(&["infinite", "unknown"]))
    } else {
        let t = total.as_f64().unwrap_or(1000.0);
        json!(rng.cents((t * 1.1) as u64 + 1))
    };
    p["total_capacity_gb"] = total;
    p["free_capacity_gb"] = free;
    if rng.chance(70) {
        p["allocated_capacity_gb"] = json!(rng.below(1000));
    }
    if rng.chance(70) {
        p["provisioned_capacity_gb"] = json!(rng.cents(3000));
    }
    if rng.chance(60) {
        p["reserved_percentage"] = if rng.chance(20) {
            json!(12.5)
        } else {
            json!(rng.below(31))
        };
    }
    p["thin_provisioning_support"] = json!(rng.chance(50));
    p["thick_provisioning_support"] = json!(rng.chance(50));
    if rng.chance(80) {
        p["max_over_subscription_ratio"] = rng.pick(&[
            json!(1.0),
            json!(1.5),
            json!(20.0),
            json!("auto"),
            json!(0.5),
            json!("2.5"),
            json!(0),
        ]);
    }
    p["iops"] = if rng.chance(70) {
        json!(rng.below(10000))
    } else {
        json!(rng.pick(&["5000", "n/a", "1e4"]))
    };
    p["tier"] = json!(rng.pick(&["gold", "silver", "bronze", "Gold"]));
    p["ssd"] = rng.pick(&[json!(true), json!(false), json!("yes"), json!("no"), json!(1)]);
    p["protocols"] = rng.pick(&[json!(["iSCSI", "NFS"]), json!(["NFS"]), json!("FC")]);
    p
}

fn random_cases(n: usize) -> Vec<Value> {
    let mut rng = Rng(0x5EED_CAFE_F00D_1234);
    let specs: &[(&str, &str)] = &[
        ("iops", ">= 3000"),
        ("iops", "<= 5000"),
        ("iops", "= 2000"),
        ("iops", "== 5000"),
        ("iops", "!= 5000"),
        ("tier", "<or> gold <or> silver"),
        ("tier", "s== gold"),
        ("tier", "s!= bronze"),
        ("tier", "s>= gold"),
        ("tier", "gold"),
        ("ssd", "<is> True"),
        ("ssd", "<is> False"),
        ("protocols", "<in> NFS"),
        ("capabilities:tier", "<or> bronze"),
        ("provisioning:type", "thick"),
        ("vendor:foo", "bar"),
    ];
    (0..n)
        .map(|k| {
            let pools: Vec<Value> = (0..1 + rng.below(12) as usize)
                .map(|i| random_pool(&mut rng, i))
                .collect();
            let mut spec_map = serde_json::Map::new();
            for _ in 0..rng.below(3) {
                let (key, value) = rng.pick(specs);
                spec_map.insert(key.into(), json!(value));
            }
            let size = if rng.chance(5) {
                0.0
            } else if rng.chance(20) {
                rng.cents(600)
            } else {
                rng.below(600) as f64
            };
            let mut c = case(
                &format!("random-{k}"),
                Value::Array(pools),
                size,
                Value::Object(spec_map),
            );
            c["capacity_weight_multiplier"] = rng.pick(&[json!(1.0), json!(-1.0), json!(2.5), json!(0.0)]);
            c["allocated_capacity_weight_multiplier"] = rng.pick(&[json!(-1.0), json!(1.0)]);
            c["weighers"] = rng.pick(&[
                json!(["capacity"]),
                json!(["allocated_capacity"]),
                json!(["capacity", "allocated_capacity"]),
            ]);
            if rng.chance(30) {
                c["burst"] = json!([rng.below(100), rng.below(100), rng.below(300)]);
            }
            c
        })
        .collect()
}

/// Where Cinder 29 raises instead of answering, and what Elara does instead. Each is checked from the pools and
/// the request, so a Cinder error the test does not expect still fails it.
///
/// - `auto` ratio of a thin pool with something provisioned and free = total + 1: Cinder divides by
///   `total - free + 1` = 0 when it loads the report (ZeroDivisionError); Elara uses the initial ratio, 20.
/// - Thin request on a thin pool whose total available capacity rounds to 0 (e.g. all of it reserved): Cinder's
///   CapacityFilter divides by it (ZeroDivisionError); Elara rejects the pool (`capacity`).
/// - Capacity weigher with a multiplier <= 0 when every passing pool has an infinite/unknown capacity: Cinder
///   takes `max()` of no finite weight (ValueError); Elara weighs them all 0, so the first wins.
fn cinder_would_raise(pools: &[PoolState], request: &Request, scheduler: &Scheduler) -> Option<&'static str> {
    for p in pools {
        if let (true, OverSubscription::Auto, Capacity::Gb(total), Capacity::Gb(free)) = (
            p.thin_provisioning_support,
            p.max_over_subscription_ratio,
            p.total_capacity_gb,
            p.free_capacity_gb,
        ) && p.provisioned_capacity_gb != 0.0
            && total - free + 1.0 == 0.0
        {
            return Some("ZeroDivisionError");
        }
    }
    let explanation = scheduler.explain(pools, request);
    let thin = request.wants_thin();
    for p in pools {
        let reached_capacity = explanation.ranked.iter().any(|r| r.pool == p.id())
            || explanation
                .rejected
                .iter()
                .any(|r| r.pool == p.id() && r.filter == Filter::Capacity);
        if reached_capacity
            && request.size_gb != 0.0
            && thin
            && p.thin_provisioning_support
            && p.effective_max_over_subscription_ratio() >= 1.0
            && p.total_capacity_gb.gb().is_some_and(|t| t > 0.0)
            && p.capacity_factors(thin)
                .is_some_and(|f| f.total_available_capacity == 0.0)
        {
            return Some("ZeroDivisionError");
        }
    }
    let capacity_weigher = scheduler.weighers.contains(&Weigher::Capacity);
    let all_infinite = !explanation.ranked.is_empty()
        && explanation.ranked.iter().all(|r| {
            let p = pools.iter().find(|p| p.id() == r.pool).expect("ranked pool");
            p.capacity_factors(thin).is_none()
        });
    if capacity_weigher && scheduler.capacity_weight_multiplier <= 0.0 && all_infinite {
        return Some("max() arg is an empty sequence");
    }
    None
}

/// Elara's answer to one case.
struct ElaraResult {
    passed: BTreeSet<String>,
    weights: BTreeMap<String, f64>,
    chosen: Option<String>,
    /// Where Cinder must raise on the first placement (see [`cinder_would_raise`]).
    raises: Option<&'static str>,
    /// Each placement of the burst, with where Cinder must raise on it.
    burst: Vec<(Option<String>, Option<&'static str>)>,
}

fn scheduler_for(case: &Value) -> Scheduler {
    let mut s = Scheduler::new();
    if let Some(m) = case["capacity_weight_multiplier"].as_f64() {
        s.capacity_weight_multiplier = m;
    }
    if let Some(m) = case["allocated_capacity_weight_multiplier"].as_f64() {
        s.allocated_capacity_weight_multiplier = m;
    }
    if let Some(ws) = case["weighers"].as_array() {
        s.weighers = ws
            .iter()
            .map(|w| match w.as_str() {
                Some("capacity") => Weigher::Capacity,
                Some("allocated_capacity") => Weigher::AllocatedCapacity,
                other => panic!("unknown weigher {other:?}"),
            })
            .collect();
    }
    s
}

/// The request Elara gets: the case's `specs`, or its `elara_specs` when Cinder gets an equivalent of them.
fn request_for(case: &Value, size: f64) -> Request {
    let specs = if case["elara_specs"].is_object() {
        &case["elara_specs"]
    } else {
        &case["specs"]
    };
    let specs: Vec<(String, String)> = specs
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string spec").to_string()))
                .collect()
        })
        .unwrap_or_default();
    Request::new(size)
        .with_specs(&specs)
        .unwrap_or_else(|e| panic!("case {}: {e}", case["name"]))
}

fn elara(case: &Value) -> ElaraResult {
    let mut pools =
        load_pools_json(&case["pools"].to_string()).unwrap_or_else(|e| panic!("case {}: {e}", case["name"]));
    let scheduler = scheduler_for(case);
    let request = request_for(case, case["size"].as_f64().unwrap());
    let explanation = scheduler.explain(&pools, &request);
    let raises = cinder_would_raise(&pools, &request, &scheduler);
    let burst = case["burst"]
        .as_array()
        .map(|sizes| {
            sizes
                .iter()
                .map(|s| {
                    let request = request_for(case, s.as_f64().unwrap());
                    let raises = cinder_would_raise(&pools, &request, &scheduler);
                    (
                        scheduler.place_and_consume(&mut pools, &request).ok().map(|p| p.pool),
                        raises,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ElaraResult {
        passed: explanation.ranked.iter().map(|r| r.pool.clone()).collect(),
        weights: explanation.ranked.iter().map(|r| (r.pool.clone(), r.weight)).collect(),
        chosen: explanation.chosen,
        raises,
        burst,
    }
}

/// Compares one case; pushes every difference to `failures`. Returns the number of weights compared and whether
/// Cinder raised (as expected) somewhere in the case.
fn compare(case: &Value, cinder: &Value, failures: &mut Vec<String>) -> (usize, bool) {
    let name = case["name"].as_str().unwrap();
    let ours = elara(case);
    let mut fail = |what: String| failures.push(format!("{name}: {what}\n    case: {case}"));
    if let Some(err) = cinder["error"].as_str() {
        match ours.raises {
            Some(expected) if err.contains(expected) => return (0, true),
            _ => {
                fail(format!(
                    "Cinder raised `{err}`, which Elara does not expect ({:?})",
                    ours.raises
                ));
                return (0, false);
            }
        }
    }
    if let Some(expected) = ours.raises {
        fail(format!("Elara expects Cinder to raise `{expected}`, but it answered"));
        return (0, false);
    }
    let passed: BTreeSet<String> = cinder["passed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    if passed != ours.passed {
        fail(format!("passing pools: cinder {passed:?}, elara {:?}", ours.passed));
        return (0, false);
    }
    let chosen = cinder["chosen"].as_str().map(String::from);
    if chosen != ours.chosen {
        fail(format!("chosen: cinder {chosen:?}, elara {:?}", ours.chosen));
    }
    let mut weights = 0;
    for w in cinder["weighed"].as_array().unwrap() {
        let pool = w[0].as_str().unwrap();
        let theirs = w[1].as_f64().unwrap();
        let mine = ours.weights[pool];
        weights += 1;
        if (theirs - mine).abs() > 1e-6 {
            fail(format!("weight of {pool}: cinder {theirs}, elara {mine}"));
        }
    }
    // The burst: the same choices up to where Cinder raised, and Cinder raises exactly where Elara expects.
    let theirs: Vec<Option<String>> = cinder["burst"]
        .as_array()
        .map(|b| b.iter().map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mine: Vec<Option<String>> = ours.burst.iter().map(|(c, _)| c.clone()).collect();
    let expected_stop = ours.burst.iter().position(|(_, raises)| raises.is_some());
    let mut raised = false;
    match (cinder["burst_error"].as_str(), expected_stop) {
        (None, None) if theirs == mine => {}
        (Some(err), Some(k))
            if theirs.len() == k && theirs[..] == mine[..k] && err.contains(ours.burst[k].1.unwrap()) =>
        {
            raised = true;
        }
        (err, _) => fail(format!(
            "burst: cinder {theirs:?} (then {err:?}), elara {mine:?} (Cinder expected to raise at {expected_stop:?})"
        )),
    }
    (weights, raised)
}

#[test]
fn elara_places_as_cinder_does() {
    let Some(python) = cinder::python("elara_places_as_cinder_does") else {
        return;
    };
    let mut cases = named_cases();
    let named = cases.len();
    cases.extend(random_cases(400));
    let answer = cinder::run(&python, &[], &json!({ "cases": cases }));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len());

    let mut failures = Vec::new();
    let mut compared_weights = 0;
    let mut cinder_raised = 0;
    for (case, cinder) in cases.iter().zip(results) {
        assert_eq!(case["name"], cinder["name"]);
        let (weights, raised) = compare(case, cinder, &mut failures);
        compared_weights += weights;
        cinder_raised += usize::from(raised);
    }
    eprintln!(
        "compared {} cases with Cinder ({named} named, {} random), {compared_weights} weights; \
         {cinder_raised} cases where Cinder raised, as expected",
        cases.len(),
        cases.len() - named
    );
    assert!(
        failures.is_empty(),
        "{} differences from Cinder:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! One placement over 100, 1 000 and 10 000 pools: Elara's scheduler (criterion) against OpenStack Cinder 29's
//! real CapacityFilter + CapabilitiesFilter + AvailabilityZoneFilter and CapacityWeigher, run in process by
//! tests/scheduler/cinder_compare.py on the same pools and request, printed side by side.
//!
//!     ELARA_CINDER_PY=$(scripts/scheduler-cinder-venv.sh) cargo bench -p elara-scheduler --bench placement
//!
//! Goal (issue 6): Elara under 1 ms at 10 000 pools and at least 100x faster than Cinder. Without
//! `ELARA_CINDER_PY` only Elara's columns are printed. Both sides start from pools already loaded (Cinder's pool
//! states, Elara's `PoolState`s) and time filters + weigher + choice; Elara's `explain` (every pool's reason, as
//! `elara scheduler explain` prints) is timed too. Elapsed ("wall") and the placing thread's CPU time are both
//! printed: on a shared 2-core machine the wall time moves with the load, the CPU time much less.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use elara_scheduler::{PoolState, Request, Scheduler, load_pools_json};
use serde_json::{Value, json};

const SIZES: [usize; 3] = [100, 1_000, 10_000];

/// `n` pools in Cinder's vocabulary, deterministic: thin and thick, reserved shares, several ratios (`auto`
/// among them), a few infinite ones, and the capabilities the request asks about.
fn pools_json(n: usize) -> Value {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let pools: Vec<Value> = (0..n)
        .map(|i| {
            let total = 500 + next(20_000);
            let free = next(total);
            let thin = next(2) == 0;
            let ratio = [json!(20.0), json!(1.5), json!("auto"), json!(4.0)][next(4) as usize].clone();
            let tier = ["gold", "silver", "bronze"][next(3) as usize];
            let mut p = json!({
                "name": format!("pool-{i:05}"),
                "total_capacity_gb": total,
                "free_capacity_gb": free,
                "allocated_capacity_gb": total - free,
                "provisioned_capacity_gb": (total - free) * (1 + next(3)),
                "reserved_percentage": next(4) * 5,
                "thin_provisioning_support": thin,
                "thick_provisioning_support": !thin,
                "max_over_subscription_ratio": ratio,
                "iops": 500 + next(10_000),
                "tier": tier,
                "ssd": next(2) == 0,
            });
            if i % 97 == 5 {
                p["total_capacity_gb"] = json!("infinite");
                p["free_capacity_gb"] = json!("infinite");
            }
            p
        })
        .collect();
    Value::Array(pools)
}

/// The request: 100 GB with two capability specs, so both filters and the weigher do real work.
fn request_specs() -> Value {
    json!({"iops": ">= 2000", "tier": "<or> gold <or> silver"})
}

fn request() -> Request {
    let specs: Vec<(String, String)> = request_specs()
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    Request::new(100.0).with_specs(&specs).expect("request")
}

/// Criterion's median estimate for one benchmark, in seconds.
fn criterion_median(out: &Path, group: &str, function: &str, n: usize) -> f64 {
    let path = out
        .join(group)
        .join(function)
        .join(n.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("criterion estimates");
    v["median"]["point_estimate"].as_f64().expect("median") / 1e9
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn main() {
    let out: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criterion-scheduler");
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let scheduler = Scheduler::default();
    let request = request();
    let mut pools_by_size: Vec<(usize, Value, Vec<PoolState>)> = Vec::new();
    for n in SIZES {
        let doc = pools_json(n);
        let pools = load_pools_json(&doc.to_string()).expect("pools");
        pools_by_size.push((n, doc, pools));
    }

    let mut group = c.benchmark_group("placement");
    for (n, _, pools) in &pools_by_size {
        group.bench_with_input(BenchmarkId::new("elara_place", n), pools, |b, pools| {
            b.iter(|| {
                scheduler
                    .place(std::hint::black_box(pools), &request)
                    .expect("a pool fits")
            })
        });
        group.bench_with_input(BenchmarkId::new("elara_explain", n), pools, |b, pools| {
            b.iter(|| scheduler.explain(std::hint::black_box(pools), &request))
        });
    }
    group.finish();

    let python = common::cinder::python("the Cinder column of the placement benchmark");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "one placement (filters + capacity weigher + choice) of 100 GB with iops >= 2000, tier <or> gold <or> silver"
    );
    println!(
        "wall: median elapsed (Elara: criterion; Cinder: {CINDER_REPEAT_SMALL}-{CINDER_REPEAT_LARGE} runs); \
         cpu: median CPU time of the placing thread. Load average: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:>6} | {:>10} {:>10} | {:>13} | {:>10} {:>10} | {:>7} {:>7} | same choice",
        "pools", "elara wall", "elara cpu", "elara explain", "cinder wall", "cinder cpu", "x wall", "x cpu"
    );
    for (n, doc, pools) in &pools_by_size {
        let place = criterion_median(&out, "placement", "elara_place", *n);
        let explain = criterion_median(&out, "placement", "elara_explain", *n);
        let cpu = cpu_per_call(|| {
            std::hint::black_box(scheduler.place(std::hint::black_box(pools), &request).is_ok());
        });
        let ours = scheduler.place(pools, &request).expect("a pool fits").pool;
        let row = match &python {
            Some(py) => {
                let repeat = if *n >= 10_000 {
                    CINDER_REPEAT_LARGE
                } else {
                    CINDER_REPEAT_SMALL
                };
                let answer = common::cinder::run(
                    py,
                    &["--bench"],
                    &json!({"pools": doc, "size": 100, "specs": request_specs(), "repeat": repeat}),
                );
                let wall = answer["seconds_median"].as_f64().expect("cinder seconds");
                let their_cpu = answer["cpu_seconds_median"].as_f64().expect("cinder cpu seconds");
                let same = answer["chosen"].as_str() == Some(ours.as_str());
                format!(
                    "{:>10} {:>10} | {:>6.0}x {:>6.0}x | {}",
                    fmt_time(wall),
                    fmt_time(their_cpu),
                    wall / place,
                    their_cpu / cpu,
                    if same { "yes" } else { "NO" }
                )
            }
            None => format!("{:>10} {:>10} | {:>7} {:>7} | -", "-", "-", "-", "-"),
        };
        println!(
            "{n:>6} | {:>10} {:>10} | {:>13} | {row} ({ours})",
            fmt_time(place),
            fmt_time(cpu),
            fmt_time(explain)
        );
    }
}

const CINDER_REPEAT_SMALL: u32 = 21;
const CINDER_REPEAT_LARGE: u32 = 7;

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Median CPU time of one call of `f`, over 15 batches of about 20 ms of CPU each.
fn cpu_per_call(mut f: impl FnMut()) -> f64 {
    let start = thread_cpu();
    f();
    let once = (thread_cpu() - start).max(1e-7);
    let batch = ((0.02 / once) as usize).clamp(1, 100_000);
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t0 = thread_cpu();
            for _ in 0..batch {
                f();
            }
            (thread_cpu() - t0) / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

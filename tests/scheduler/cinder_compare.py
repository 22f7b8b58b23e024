"""Run OpenStack Cinder's REAL scheduler filters and weighers in process on Elara's test cases.

Adapted from the Cinder recipe's sched_inproc.py. Needs the venv made by scripts/scheduler-cinder-venv.sh.

    python cinder_compare.py < cases.json          # compare mode: one JSON result per case
    python cinder_compare.py --bench < bench.json  # timing mode
    python cinder_compare.py --match < pairs.json  # extra_specs_ops.match on (capability, requirement) pairs

Compare input: {"cases": [{"name": str, "pools": [pool, ...], "size": number, "specs": {key: value},
                           "capacity_weight_multiplier": float?, "allocated_capacity_weight_multiplier": float?,
                           "weighers": ["capacity"|"allocated_capacity", ...]?, "burst": [size, ...]?}]}
  a pool is an object in Cinder's capability vocabulary with its name under "name".
Compare output: {"results": [{"name", "passed": [pool names, input order], "weighed": [[name, weight], ...]
                  (best first), "chosen": name|null, "burst": [name|null, ...], "error": str?, "burst_error": str?}]}
  "error": Cinder raised on the first placement (nothing else is set); "burst_error": it raised on the
  placement after the last one in "burst".
Match input: {"pairs": [[capability value, requirement text], ...]}
Match output: {"results": [true | false | "TypeName: message" (match raised), ...]}
Bench input: {"pools": [...], "size": n, "specs": {...}, "repeat": n}
Bench output: {"pools": n, "repeat": n, "seconds_min": s, "seconds_median": s, "cpu_seconds_median": s (the
  thread's CPU time), "chosen": name} (one placement:
  CapacityFilter + CapabilitiesFilter + AvailabilityZoneFilter, then CapacityWeigher, on pools already loaded)
"""
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from oslo_config import cfg  # noqa: E402
from oslo_utils import timeutils  # noqa: E402

from cinder import objects  # noqa: E402

objects.register_all()
from cinder.scheduler import filters as sfilters  # noqa: E402
from cinder.scheduler.filters import extra_specs_ops  # noqa: E402
from cinder.scheduler import host_manager, weights  # noqa: E402
from cinder.scheduler.filters.availability_zone_filter import AvailabilityZoneFilter  # noqa: E402
from cinder.scheduler.filters.capabilities_filter import CapabilitiesFilter  # noqa: E402
from cinder.scheduler.filters.capacity_filter import CapacityFilter  # noqa: E402
from cinder.scheduler.weights.capacity import AllocatedCapacityWeigher, CapacityWeigher  # noqa: E402

CONF = cfg.CONF
CONF([], project="cinder")  # defaults only; no config file

FILTERS = [AvailabilityZoneFilter, CapacityFilter, CapabilitiesFilter]
WEIGHERS = {"capacity": CapacityWeigher, "allocated_capacity": AllocatedCapacityWeigher}
HANDLER = sfilters.BackendFilterHandler("cinder.scheduler.filters")
WEIGH = weights.OrderedHostWeightHandler("cinder.scheduler.weights")
NOW = timeutils.utcnow()


def make_pool(d):
    cap = dict(d)
    name = cap.pop("name")
    cap["pool_name"] = name
    cap["timestamp"] = NOW
    ps = host_manager.PoolState("elara", None, None, name)
    ps.update_from_volume_capability(cap, service={"availability_zone": "nova"})
    return ps


def props(size, specs):
    vt = {"extra_specs": dict(specs)}
    return {"size": size, "volume_type": vt, "resource_type": vt,
            "request_spec": {"volume_id": "x", "resource_properties": {}}}


def place(pools, size, specs, weighers):
    p = props(size, specs)
    passed = list(HANDLER.get_filtered_objects(FILTERS, pools, p))
    weighed = WEIGH.get_weighed_objects(weighers, passed, p)
    return passed, weighed


def run_case(case):
    CONF.set_override("capacity_weight_multiplier", case.get("capacity_weight_multiplier", 1.0))
    CONF.set_override("allocated_capacity_weight_multiplier",
                      case.get("allocated_capacity_weight_multiplier", -1.0))
    weighers = [WEIGHERS[w] for w in case.get("weighers", ["capacity"])]
    out = {"name": case["name"]}
    try:
        pools = [make_pool(d) for d in case["pools"]]
        passed, weighed = place(pools, case["size"], case.get("specs", {}), weighers)
        out["passed"] = [p.pool_name for p in passed]
        out["weighed"] = [[w.obj.pool_name, w.weight] for w in weighed]
        out["chosen"] = weighed[0].obj.pool_name if weighed else None
    except Exception as e:  # a Cinder crash is a result too; the Rust side judges it
        out["error"] = error_text(e)
        return out
    burst = []
    out["burst"] = burst
    for size in case.get("burst", []):
        try:
            _, weighed = place(pools, size, case.get("specs", {}), weighers)
        except Exception as e:  # the burst stops where Cinder raised
            out["burst_error"] = error_text(e)
            break
        if weighed:
            # What FilterScheduler._choose_top_backend does.
            weighed[0].obj.consume_from_volume({"size": size})
            burst.append(weighed[0].obj.pool_name)
        else:
            burst.append(None)
    return out


def error_text(e):
    return "%s: %s" % (type(e).__name__, e)


def bench(doc):
    CONF.set_override("capacity_weight_multiplier", 1.0)
    pools = [make_pool(d) for d in doc["pools"]]
    specs = doc.get("specs", {})
    repeat = max(1, int(doc.get("repeat", 5)))
    times = []
    cpu = []
    chosen = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        _, weighed = place(pools, doc["size"], specs, [CapacityWeigher])
        cpu.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
        chosen = weighed[0].obj.pool_name if weighed else None
    times.sort()
    cpu.sort()
    return {"pools": len(pools), "repeat": repeat, "seconds_min": times[0],
            "seconds_median": times[len(times) // 2], "cpu_seconds_median": cpu[len(cpu) // 2],
            "chosen": chosen}


def match_pairs(doc):
    results = []
    for value, req in doc["pairs"]:
        try:
            results.append(bool(extra_specs_ops.match(value, req)))
        except Exception as e:
            results.append(error_text(e))
    return {"results": results}


def main():
    doc = json.load(sys.stdin)
    if "--bench" in sys.argv[1:]:
        print(json.dumps(bench(doc)))
    elif "--match" in sys.argv[1:]:
        print(json.dumps(match_pairs(doc)))
    else:
        print(json.dumps({"results": [run_case(c) for c in doc["cases"]]}))


if __name__ == "__main__":
    main()

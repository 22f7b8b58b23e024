//! Weighers (`cinder/scheduler/weights/capacity.py` + `base_weight.py`): each gives every passing pool a raw
//! value, the values are normalised to 0..1 across the pools (min → 0, max → 1, all equal → 0), multiplied by
//! the weigher's multiplier and summed. The highest total wins.

use serde::{Deserialize, Serialize};

use crate::pool::PoolState;
use crate::request::Request;

/// Cinder's CapacityWeigher `OFFSET_MIN`.
const OFFSET_MIN: f64 = 10000.0;
/// Cinder's CapacityWeigher `OFFSET_MULT`.
const OFFSET_MULT: f64 = 100.0;

/// The weighers Elara has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weigher {
    /// Virtual free capacity (thin pools: total × ratio − provisioned; otherwise free after reserve).
    /// Multiplier `capacity_weight_multiplier` (Cinder default 1.0: spread; negative: stack).
    /// A pool with infinite/unknown capacity weighs least either way.
    Capacity,
    /// Allocated capacity. Multiplier `allocated_capacity_weight_multiplier` (Cinder default -1.0: the least
    /// allocated pool wins).
    AllocatedCapacity,
}

/// Raw CapacityWeigher value of one pool (`CapacityWeigher._weigh_object`).
pub fn capacity_raw(pool: &PoolState, thin: bool, multiplier: f64) -> f64 {
    match pool.capacity_factors(thin) {
        Some(f) => f.virtual_free_capacity,
        // infinite/unknown: lowest weight whichever way the multiplier points.
        None => {
            if multiplier > 0.0 {
                -1.0
            } else {
                f64::INFINITY
            }
        }
    }
}

/// Normalises `values` in place as `base_weight.normalize` with the weigher's min/max.
fn normalize(values: &mut [f64], min: f64, max: f64) {
    if min == max {
        values.iter_mut().for_each(|v| *v = 0.0);
    } else {
        let range = max - min;
        values.iter_mut().for_each(|v| *v = (*v - min) / range);
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    // As BaseWeigher.weigh_objects tracks them: strict comparisons from the first value.
    let mut min = values[0];
    let mut max = values[0];
    for &v in &values[1..] {
        if v < min {
            min = v;
        } else if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The raw value `weigher` gives `pool` (`_weigh_object`), before normalisation. `thin` is
/// [`Request::wants_thin`].
pub fn raw_weight(weigher: Weigher, pool: &PoolState, thin: bool, multiplier: f64) -> f64 {
    match weigher {
        Weigher::Capacity => capacity_raw(pool, thin, multiplier),
        Weigher::AllocatedCapacity => pool.allocated_capacity_gb,
    }
}

/// Adds `multiplier × normalised weight` of `weigher` to `totals` (one per pool of `pools`).
pub fn add_weights(weigher: Weigher, pools: &[&PoolState], request: &Request, multiplier: f64, totals: &mut [f64]) {
    let thin = request.wants_thin();
    let raw = pools.iter().map(|p| raw_weight(weigher, p, thin, multiplier)).collect();
    add_raw_weights(weigher, raw, multiplier, totals);
}

/// Normalises the raw values of `weigher` (one per passing pool, from [`raw_weight`]) as Cinder's
/// `BaseWeigher.weigh_objects` (and CapacityWeigher's handling of infinite values), and adds
/// `multiplier × normalised weight` to `totals`.
pub fn add_raw_weights(weigher: Weigher, mut raw: Vec<f64>, multiplier: f64, totals: &mut [f64]) {
    if raw.is_empty() {
        return;
    }
    let (mut min, mut max) = min_max(&raw);
    if weigher == Weigher::Capacity && max == f64::INFINITY {
        // CapacityWeigher.weigh_objects: infinite weights become the largest finite weight plus an offset.
        match raw.iter().copied().filter(|w| !w.is_infinite()).reduce(f64::max) {
            Some(finite_max) => {
                let offset = (finite_max - min) * OFFSET_MULT;
                max = finite_max + if offset == 0.0 { OFFSET_MIN } else { offset };
                raw.iter_mut().filter(|w| w.is_infinite()).for_each(|w| *w = max);
            }
            // Every pool infinite/unknown: Cinder raises (max() of an empty list); Elara weighs them all 0.
            None => (min, max) = (0.0, 0.0),
        }
    }
    normalize(&mut raw, min, max);
    for (total, w) in totals.iter_mut().zip(raw) {
        *total += multiplier * w;
    }
}

//! The scheduler: filters, then weighers, then the highest weight.
//!
//! Ties: the first pool (in the order given) among those of equal highest weight wins, as in Cinder, whose
//! stable descending sort keeps the input order of equal weights and takes the first. Callers that want a
//! reproducible choice pass pools in a stable order (the daemon sorts them by id).

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::filters::{self, Filter, FilterContext};
use crate::pool::PoolState;
use crate::request::Request;
use crate::weighers::{self, Weigher};

/// Scheduler settings, with Cinder's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduler {
    /// Cinder's `capacity_weight_multiplier` (default 1.0: spread; negative: stack).
    pub capacity_weight_multiplier: f64,
    /// Cinder's `allocated_capacity_weight_multiplier` (default -1.0).
    pub allocated_capacity_weight_multiplier: f64,
    /// Weighers to apply (default: Capacity, Cinder's `scheduler_default_weighers`).
    pub weighers: Vec<Weigher>,
    /// Pools whose last report is older are rejected (`stale`); `None`: no check.
    pub max_pool_age: Option<Duration>,
    /// Nodes known down: their pools are rejected (`node_down`).
    pub down_nodes: BTreeSet<String>,
    /// The time staleness is measured against; `None`: the clock at each call.
    pub now: Option<SystemTime>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            capacity_weight_multiplier: 1.0,
            allocated_capacity_weight_multiplier: -1.0,
            weighers: vec![Weigher::Capacity],
            max_pool_age: None,
            down_nodes: BTreeSet::new(),
            now: None,
        }
    }
}

/// Where the volume goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The pool's id ([`PoolState::id`]).
    pub pool: String,
    /// Its index in the slice given to [`Scheduler::place`].
    pub index: usize,
    pub weight: f64,
}

/// A pool that passed every filter, with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub pool: String,
    pub weight: f64,
}

/// A pool a filter rejected, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub pool: String,
    pub filter: Filter,
    pub reason: String,
}

/// Every pool's fate for one request. JSON:
/// `{"chosen": "<pool>"|null, "ranked": [{"pool","weight"}…], "rejected": [{"pool","filter","reason"}…]}`;
/// `ranked` is best first, `rejected` in input order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub chosen: Option<String>,
    pub ranked: Vec<Ranked>,
    pub rejected: Vec<Rejected>,
}

impl Explanation {
    /// The chosen pool, or "no valid pool" listing every pool with the filter that rejected it and why (for a
    /// request of `size_gb`).
    pub fn chosen_or_error(&self, size_gb: f64) -> Result<&str, NoValidPool> {
        self.chosen.as_deref().ok_or_else(|| NoValidPool {
            size_gb,
            rejected: self.rejected.clone(),
        })
    }
}

/// No pool passed the filters.
#[derive(Debug, Clone, PartialEq, Error)]
pub struct NoValidPool {
    pub size_gb: f64,
    /// Every pool with the filter that rejected it and why (empty when there were no pools).
    pub rejected: Vec<Rejected>,
}

impl fmt::Display for NoValidPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejected.is_empty() {
            return write!(f, "no valid pool for a {} GB volume: no pools are known", self.size_gb);
        }
        write!(f, "no valid pool for a {} GB volume:", self.size_gb)?;
        for r in &self.rejected {
            write!(f, "\n  {}: {}: {}", r.pool, r.filter, r.reason)?;
        }
        Ok(())
    }
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    fn context(&self, verbose: bool) -> FilterContext<'_> {
        FilterContext {
            now: self.now.unwrap_or_else(SystemTime::now),
            max_pool_age: self.max_pool_age,
            down_nodes: &self.down_nodes,
            verbose,
        }
    }

    fn multiplier(&self, w: Weigher) -> f64 {
        match w {
            Weigher::Capacity => self.capacity_weight_multiplier,
            Weigher::AllocatedCapacity => self.allocated_capacity_weight_multiplier,
        }
    }

    /// Indices of the pools passing every filter, and their total weights.
    fn weigh(&self, pools: &[PoolState], request: &Request, verbose: bool) -> (Vec<usize>, Vec<f64>, Vec<Rejected>) {
        let ctx = self.context(verbose);
        let active = filters::active(request, &ctx);
        let mut passed = Vec::with_capacity(pools.len());
        let mut rejected = Vec::new();
        // Raw weights are taken in the same pass as the filters, while the pool is in cache: over 10 000 pools
        // a second pass over them costs as much as the first.
        let thin = request.wants_thin();
        let multipliers: Vec<f64> = self.weighers.iter().map(|&w| self.multiplier(w)).collect();
        let mut raw: Vec<Vec<f64>> = self.weighers.iter().map(|_| Vec::with_capacity(pools.len())).collect();
        for (i, pool) in pools.iter().enumerate() {
            match filters::check_only(&active, pool, request, &ctx) {
                Ok(()) => {
                    passed.push(i);
                    for ((&w, &m), values) in self.weighers.iter().zip(&multipliers).zip(&mut raw) {
                        values.push(weighers::raw_weight(w, pool, thin, m));
                    }
                }
                Err((filter, reason)) => {
                    if verbose {
                        rejected.push(Rejected {
                            pool: pool.id(),
                            filter,
                            reason,
                        });
                    }
                }
            }
        }
        let mut weights = vec![0.0; passed.len()];
        for ((&w, m), values) in self.weighers.iter().zip(multipliers).zip(raw) {
            weighers::add_raw_weights(w, values, m, &mut weights);
        }
        (passed, weights, rejected)
    }

    /// Chooses a pool. Does not change the pools; see [`Scheduler::place_and_consume`].
    pub fn place(&self, pools: &[PoolState], request: &Request) -> Result<Placement, NoValidPool> {
        let (passed, weights, _) = self.weigh(pools, request, false);
        let mut best: Option<(usize, f64)> = None;
        for (k, &w) in weights.iter().enumerate() {
            // Strictly greater: the first of equal weights wins.
            if best.is_none_or(|(_, bw)| w > bw) {
                best = Some((k, w));
            }
        }
        match best {
            Some((k, weight)) => {
                let index = passed[k];
                Ok(Placement {
                    pool: pools[index].id(),
                    index,
                    weight,
                })
            }
            None => {
                let (_, _, rejected) = self.weigh(pools, request, true);
                Err(NoValidPool {
                    size_gb: request.size_gb,
                    rejected,
                })
            }
        }
    }

    /// Chooses a pool and consumes the request's size from it in memory (Cinder's `_choose_top_backend`), so
    /// the next placements of a burst see it before the driver reports again.
    pub fn place_and_consume(&self, pools: &mut [PoolState], request: &Request) -> Result<Placement, NoValidPool> {
        let placement = self.place(pools, request)?;
        pools[placement.index].consume(request.size_gb);
        Ok(placement)
    }

    /// Every pool's fate: the ranking (best first, ties in input order), the rejections with reasons.
    pub fn explain(&self, pools: &[PoolState], request: &Request) -> Explanation {
        let (passed, weights, rejected) = self.weigh(pools, request, true);
        let mut ranked: Vec<Ranked> = passed
            .iter()
            .zip(&weights)
            .map(|(&i, &weight)| Ranked {
                pool: pools[i].id(),
                weight,
            })
            .collect();
        // Stable: equal weights keep the input order, as Python's sorted(reverse=True).
        ranked.sort_by(|a, b| b.weight.partial_cmp(&a.weight).unwrap_or(std::cmp::Ordering::Equal));
        Explanation {
            chosen: ranked.first().map(|r| r.pool.clone()),
            ranked,
            rejected,
        }
    }
}

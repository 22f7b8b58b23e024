//! Elara's volume scheduler, with OpenStack Cinder's semantics: Cinder's CapacityFilter, CapabilitiesFilter
//! (every extra-spec operator) and AvailabilityZoneFilter, then its CapacityWeigher / AllocatedCapacityWeigher.
//! `tests/cinder_compare.rs` checks it against Cinder 29.0.0's own filters and weighers run in process on the
//! same pools and requests; `benches/placement.rs` times both.
//!
//! A pure library: no store, no runtime, no I/O, no clock except [`Scheduler::now`] (defaults to the system
//! clock, for staleness).
//!
//! # Live placement (the daemon)
//!
//! 1. **Pools.** For every pool of every driver's `pools()` report, build a [`PoolState`] with
//!    [`PoolState::from_report`] from a [`PoolReport`]: the WIT `pool` record's fields (capacities as
//!    [`ByteCapacity`], provisioned bytes, reserved percentage, thin/thick, over-subscription ratio text,
//!    capability pairs) plus what the daemon knows: `backend` (the driver instance's name), `driver`, `node`
//!    (`None` for a pool every node can use), `availability_zone`, `allocated_bytes` (sum of the sizes of the
//!    volumes Elara placed there, from its store) and `updated_at` (when the report was taken). A bad report is
//!    a [`PoolError`] naming pool and field. Keep the pools in one `Vec<PoolState>` **sorted by
//!    [`PoolState::id`]** (`backend#name`), so ties break the same way on every node. On each new report,
//!    replace the pool's state (this also drops what was consumed in memory since the last report, as Cinder
//!    does); drop pools no longer reported.
//! 2. **Settings.** One [`Scheduler`]: `capacity_weight_multiplier` (1.0 spreads, negative stacks),
//!    `allocated_capacity_weight_multiplier` (-1.0), `weighers` (default `[Weigher::Capacity]`),
//!    `max_pool_age: Some(report interval × 3, say)` so a stale pool is rejected (`stale`), and `down_nodes`
//!    (nodes whose pools are rejected, `node_down`). Leave `now` as `None`.
//! 3. **Request.** [`Request::new`]`(size_gb)` then [`Request::with_specs`] with the volume type's extra specs
//!    and the inline ones (`-o spec='iops>=1000'` → [`parse_spec_arg`] → `(key, value)`), plus the optional
//!    constraints `node`, `availability_zone`, `backend`, `driver`, `pool`. A value that does not parse is a
//!    [`SpecError::Parse`] whose [`ParseError`] has the character `position` and the reason; the same check
//!    validates specs at `elara type create` ([`Spec::new`] per `--spec`). Sizes are GiB (`bytes / 2^30`).
//! 4. **Place.** Under the write lock of the pools vector:
//!    [`Scheduler::place_and_consume`]`(&mut pools, &request)` → [`Placement`] `{ pool: id, index, weight }`,
//!    the chosen pool already charged with the size in memory ([`PoolState::consume`], Cinder's
//!    `consume_from_volume`), so a burst of creates spreads before the next report. Or
//!    [`NoValidPool`], whose `Display` lists every pool with the filter that rejected it and why. If the
//!    driver's create then fails, give the capacity back with `pools[index].consume(-size_gb)` (Cinder's
//!    `revert_volume_consumed_capacity`), if the pool is still the same one (`pools[index].id() == pool`).
//! 5. **Explain.** `elara scheduler explain` live: [`Scheduler::explain`]`(&pools, &request)` →
//!    [`Explanation`], serialised with serde as
//!    `{"chosen": "<pool>"|null, "ranked": [{"pool", "weight"}…], "rejected": [{"pool", "filter", "reason"}…]}`
//!    (stale and down-node pools appear in `rejected` with filter `stale` / `node_down`);
//!    [`Explanation::chosen_or_error`] turns "no pool fits" into the [`NoValidPool`] error.
//!
//! # Offline explain (the CLI)
//!
//! `elara scheduler explain --pools pools.json --size N --spec KEY=VALUE …`:
//! [`explain_offline_args`]`(json_text, size_gb, &spec_args, &Scheduler::default())` → [`Explanation`] or an
//! [`Error`] (pools file: pool and field; spec: key, character position and why; size). The pools file is in
//! Cinder's capability vocabulary ([`PoolState::from_cinder_json`]), capacities may be `"infinite"` /
//! `"unknown"`; Cinder's `get_pools?detail=true` answer is read as is.
//!
//! # Modules
//!
//! - [`pool`]: pools in Cinder's vocabulary, capacity arithmetic, JSON loading, consumption.
//! - [`capabilities`]: the capability map, with interned keys for the filter's hot path.
//! - [`expr`]: extra-spec value expressions (`>= 1000`, `<is> True`, `<or> a <or> b` …) with positioned errors.
//! - [`request`]: the request (size, specs, constraints) and the `--spec KEY=VALUE` splitter.
//! - [`filters`]: capacity, capabilities, availability zone, node, backend, driver, pool name, staleness,
//!   node liveness.
//! - [`weighers`]: capacity and allocated capacity, normalised as Cinder.
//! - [`scheduler`]: [`Scheduler::place`], [`Scheduler::explain`], [`NoValidPool`].
//! - [`offline`]: [`explain_offline_args`] for `elara scheduler explain --pools FILE`.
//! - [`compat`]: the Python behaviours Cinder relies on (`float()`, `round(x, 2)`, oslo's booleans).

pub mod capabilities;
pub mod compat;
pub mod expr;
pub mod filters;
pub mod offline;
pub mod pool;
pub mod request;
pub mod scheduler;
pub mod weighers;

pub use capabilities::{Capabilities, KeyId, key_id};
pub use expr::{Expr, ParseError, parse as parse_expr};
pub use filters::Filter;
pub use offline::{Error, explain_offline, explain_offline_args};
pub use pool::{ByteCapacity, Capacity, OverSubscription, PoolError, PoolReport, PoolState, consume, load_pools_json};
pub use request::{Request, Spec, SpecError, parse_spec_arg};
pub use scheduler::{Explanation, NoValidPool, Placement, Ranked, Rejected, Scheduler};
pub use weighers::Weigher;

//! Elara's volume scheduler, with OpenStack Cinder's semantics (checked against Cinder 29.0.0 by
//! `tests/cinder_compare.rs`).
//!
//! A pure library: no store, no runtime, no I/O. The daemon turns each driver's `pools()` report into
//! [`PoolState`]s ([`PoolState::from_report`]), and for each create calls [`Scheduler::place_and_consume`]
//! (or [`Scheduler::explain`] to show why).
//!
//! - [`pool`]: pools in Cinder's vocabulary, capacity arithmetic, JSON loading, consumption.
//! - [`expr`]: extra-spec value expressions (`>= 1000`, `<is> True`, `<or> a <or> b` …) with positioned errors.
//! - [`request`]: the request (size, specs, constraints) and the `--spec KEY=VALUE` splitter.
//! - [`filters`]: capacity, capabilities, availability zone, node, backend, driver, pool name, staleness,
//!   node liveness.
//! - [`weighers`]: capacity and allocated capacity, normalised as Cinder.
//! - [`scheduler`]: [`Scheduler::place`], [`Scheduler::explain`], [`NoValidPool`].
//! - [`offline`]: [`explain_offline`] for `elara scheduler explain --pools FILE`.

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
pub use offline::{Error, explain_offline};
pub use pool::{
    ByteCapacity, Capacity, OverSubscription, PoolError, PoolReport, PoolState, consume,
    load_pools_json,
};
pub use request::{Request, Spec, SpecError, parse_spec_arg};
pub use scheduler::{Explanation, NoValidPool, Placement, Ranked, Rejected, Scheduler};
pub use weighers::Weigher;

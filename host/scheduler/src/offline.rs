//! Offline explain: the library side of `elara scheduler explain --pools pools.json --size N --spec K=V …`.

use thiserror::Error;

use crate::pool::{PoolError, load_pools_json};
use crate::request::{Request, SpecError};
use crate::scheduler::{Explanation, Scheduler};

/// Why an offline explain could not run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    #[error(transparent)]
    Pools(#[from] PoolError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("size must be a finite number of GB >= 0, got {0}")]
    Size(f64),
}

/// Loads pools from `pools_json` (see [`crate::pool::load_pools_json`]), builds a request of `size_gb` with
/// `specs` (already split by [`crate::parse_spec_arg`]) and explains it with `scheduler`'s settings
/// (multipliers, weighers).
pub fn explain_offline(
    pools_json: &str,
    size_gb: f64,
    specs: &[(String, String)],
    scheduler: &Scheduler,
) -> Result<Explanation, Error> {
    if !size_gb.is_finite() || size_gb < 0.0 {
        return Err(Error::Size(size_gb));
    }
    let pools = load_pools_json(pools_json)?;
    let request = Request::new(size_gb).with_specs(specs)?;
    Ok(scheduler.explain(&pools, &request))
}

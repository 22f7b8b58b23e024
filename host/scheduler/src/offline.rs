//! Offline explain: the library side of `elara scheduler explain --pools pools.json --size N --spec K=V …`.

use thiserror::Error;

use crate::pool::{PoolError, load_pools_json};
use crate::request::{Request, SpecError, parse_spec_arg};
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

/// `elara scheduler explain --pools FILE --size N --spec KEY=VALUE …` in one call: `spec_args` are the raw
/// `--spec` arguments, each split at its first `=` by [`parse_spec_arg`] (with its `iops>=1000` shorthand).
/// The CLI prints the answer with `serde_json::to_string(&explanation)` for `--output json`, and turns "no
/// pool fits" into an error with [`Explanation::chosen_or_error`].
///
/// ```
/// use elara_scheduler::{Scheduler, explain_offline_args};
/// let pools = r#"[{"name": "a", "total_capacity_gb": 100, "free_capacity_gb": 80, "iops": 5000},
///                 {"name": "b", "total_capacity_gb": "infinite", "free_capacity_gb": "unknown"}]"#;
/// let e = explain_offline_args(pools, 10.0, &["iops=>= 1000"], &Scheduler::default()).unwrap();
/// assert_eq!(e.chosen.as_deref(), Some("a"));
/// assert_eq!(e.rejected[0].pool, "b"); // no `iops` capability
/// let err = explain_offline_args(pools, 10.0, &["iops=>= lots"], &Scheduler::default()).unwrap_err();
/// assert!(err.to_string().contains("at character 3"), "{err}");
/// ```
pub fn explain_offline_args<S: AsRef<str>>(
    pools_json: &str,
    size_gb: f64,
    spec_args: &[S],
    scheduler: &Scheduler,
) -> Result<Explanation, Error> {
    let specs = spec_args
        .iter()
        .map(|a| parse_spec_arg(a.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    explain_offline(pools_json, size_gb, &specs, scheduler)
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

//! The contract's rule for a repeated `create`: with the same id and the same request it returns
//! the volume that exists (a retry after a crash or a timeout); with the same id and a different
//! request it is `already-exists`.

use crate::types::DriverError;

/// Check that an existing volume (`have_*`) is what a create asks for (`want_*`): the same size
/// and the same origin (`None`: empty; `Some(snapshot id)`: made from that snapshot).
pub fn check_same_volume(
    id: &str,
    have_size: u64,
    have_from: Option<&str>,
    want_size: u64,
    want_from: Option<&str>,
) -> Result<(), DriverError> {
    if have_size != want_size {
        return Err(DriverError::already_exists(format!(
            "volume {id} exists with size {have_size} bytes, not {want_size}"
        )));
    }
    if have_from != want_from {
        let describe = |s: Option<&str>| s.map_or("empty".to_string(), |s| format!("from snapshot {s}"));
        return Err(DriverError::already_exists(format!(
            "volume {id} exists, created {}, not {}",
            describe(have_from),
            describe(want_from)
        )));
    }
    Ok(())
}

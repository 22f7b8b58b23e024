//! Checks on the ids Elara hands a driver (volume, snapshot and pool ids).

use crate::types::DriverError;

/// Reject ids that are not plain file names, so an id can never name a path outside its
/// directory (`..`, `/`) or collide with a driver's temporary or hidden files (leading `.`).
/// Elara's own ids (UUIDs) always pass; the error names `field`.
pub fn check_id(field: &str, id: &str) -> Result<(), DriverError> {
    if id.is_empty() {
        return Err(DriverError::invalid(field, "must not be empty"));
    }
    if id.len() > 200 {
        return Err(DriverError::invalid(field, "must be at most 200 characters"));
    }
    if id.starts_with('.') {
        return Err(DriverError::invalid(field, "must not start with '.'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(DriverError::invalid(
            field,
            format!("contains {c:?}: only letters, digits, '-', '_' and '.' are allowed"),
        ));
    }
    Ok(())
}

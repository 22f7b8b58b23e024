//! Checks both back ends run before touching storage, so they refuse the same input the same way.

use std::collections::HashSet;

use crate::{MAX_KEY_SIZE, Op, Result, StoreError, Txn};

pub(crate) fn key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::Other("key: must not be empty".into()));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(StoreError::Other(format!(
            "key: {} bytes is longer than the {MAX_KEY_SIZE}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn put(key_: &str, value: &[u8], max_value_size: usize) -> Result<()> {
    key(key_)?;
    if value.len() > max_value_size {
        return Err(StoreError::TooLarge {
            key: key_.to_string(),
            size: value.len(),
            limit: max_value_size,
        });
    }
    Ok(())
}

/// Keys valid, each value and all values together within the limit, no key written twice
/// (etcd refuses duplicate keys in one transaction).
pub(crate) fn txn(txn: &Txn, max_value_size: usize) -> Result<()> {
    for compare in &txn.compares {
        match compare {
            crate::Compare::Revision { key: k, .. } | crate::Compare::Exists { key: k } => key(k)?,
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for op in &txn.ops {
        let k = match op {
            Op::Put { key: k, value, .. } => {
                put(k, value, max_value_size)?;
                total += value.len();
                if total > max_value_size {
                    return Err(StoreError::TooLarge {
                        key: k.clone(),
                        size: total,
                        limit: max_value_size,
                    });
                }
                k
            }
            Op::Delete { key: k } => {
                key(k)?;
                k
            }
        };
        if !seen.insert(k.as_str()) {
            return Err(StoreError::Other(format!(
                "key {k:?}: written twice in one transaction"
            )));
        }
    }
    Ok(())
}

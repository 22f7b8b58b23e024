//! Helpers shared by the integration tests, the benchmark and the fuzz target.

pub mod cinder;
pub mod expr_props;

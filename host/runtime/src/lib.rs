//! Elara's driver runtime (being written).

//! The daemon's doors: REST (unix socket and optional TLS TCP) and Docker's volume plugin API.

pub mod docker;
pub mod rest;
pub mod tcp;

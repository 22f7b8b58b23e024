//! # elara-driver-sdk: write Elara storage drivers
//!
//! An Elara storage driver is a WebAssembly component (`wasm32-wasip2`) that implements the WIT
//! contract in `wit/driver.wit` (package `elara:driver@0.1.1`, world `driver-world`). This crate
//! gives a driver author everything needed on the guest side:
//!
//! - the generated bindings of the contract, re-exported at [`types`] (records, variants, flags),
//!   [`Guest`] (the trait a driver implements) and [`host`] (the host powers: pool figures,
//!   reflink-or-copy, allocated bytes);
//! - [`export_driver!`], which turns `struct MyDriver; impl Guest for MyDriver { .. }` into the
//!   component's exports;
//! - typed error helpers on [`DriverError`] ([`DriverError::invalid`], [`DriverError::not_found`],
//!   ...), `From<std::io::Error>` and [`ResultExt::context`];
//! - logging into the host's `tracing` ([`info!`], [`warn!`], ... and [`log`]);
//! - configuration parsing ([`config::Config`]) driven by the same [`ConfigKey`] list the driver
//!   returns from `info()`, plus [`config::Settings`] to keep the parsed settings;
//! - a blocking HTTP client over `wasi:http` ([`http::Client`]) with JSON helpers;
//! - a size parser ([`size::parse_size`]: `10G`, `10GiB`, `512M`, `1TB`).
//!
//! ```ignore
//! use elara_driver_sdk::prelude::*;
//!
//! struct MyDriver;
//! impl Guest for MyDriver { /* every export of the `driver` interface */ }
//! elara_driver_sdk::export_driver!(MyDriver);
//! ```
//!
//! The SDK's own example, `examples/dir-driver.rs`, is a complete small driver.

// The generated code refers to this crate by name (see `runtime_path` below) so that the export
// macro works when expanded inside a driver's crate.
extern crate self as elara_driver_sdk;

pub mod config;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod log;
pub mod names;
pub mod pool;
pub mod size;

/// The generated bindings. Use the re-exports ([`types`], [`host`], [`Guest`]) instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "driver-world",
        pub_export_macro: true,
        runtime_path: "elara_driver_sdk::__rt",
        default_bindings_module: "elara_driver_sdk::bindings",
    });
}

/// wit-bindgen's runtime support, used by code the export macro expands in a driver's crate.
#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

/// The contract's shared types: [`DriverInfo`](types::DriverInfo), [`VolumeSpec`](types::VolumeSpec),
/// [`Connection`](types::Connection), [`Features`](types::Features), ...
pub mod types {
    pub use crate::bindings::elara::driver::types::*;
}

/// Powers the host lends to a driver, scoped to the backend's pool directory (seen as `/pool`).
/// Paths are relative to the pool directory.
pub mod host {
    pub use crate::bindings::elara::driver::host::{CopyMethod, FsStats, allocated_bytes, clone_file, pool_stats};
}

/// The trait a driver implements: one function per export of the `driver` interface.
pub use bindings::exports::elara::driver::driver::Guest;
pub use error::{DriverResult, ResultExt};
pub use types::{ConfigKey, DriverError, Features, InvalidField};

/// Everything a driver usually needs, in one `use elara_driver_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::config::{Config, Settings};
    pub use crate::error::{DriverResult, ResultExt};
    pub use crate::types::*;
    pub use crate::{Guest, host};
}

/// Export a type implementing [`Guest`] as the component's `driver` interface.
///
/// ```ignore
/// struct MyDriver;
/// impl elara_driver_sdk::Guest for MyDriver { /* ... */ }
/// elara_driver_sdk::export_driver!(MyDriver);
/// ```
#[macro_export]
macro_rules! export_driver {
    ($ty:ident) => {
        $crate::__export_driver_world_impl!($ty with_types_in $crate::bindings);
    };
}

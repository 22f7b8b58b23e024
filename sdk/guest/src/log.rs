//! Logging into the host's `tracing`, tagged with the backend by the host, and a long call's
//! progress.
//!
//! ```ignore
//! elara_driver_sdk::info!("created volume {id} ({size} bytes)");
//! elara_driver_sdk::log::warn!("pool is {pct}% full");   // the same macros, by module path
//! elara_driver_sdk::log::write(Level::Debug, "plain text");
//! elara_driver_sdk::log::progress(copied, total);         // bytes of a snapshot's copy
//! ```
//!
//! The host caps the size of each message and the rate of a flood; keep messages short.

pub use crate::bindings::elara::driver::log::Level;
pub use crate::{debug, error, info, trace, warn};

/// Send one message to the host's log at `level`.
pub fn write(level: Level, message: &str) {
    crate::bindings::elara::driver::log::log(level, message);
}

/// Tell the host how far the current call has come: `done` of `total` bytes (a snapshot's or a
/// clone's copy). The host shows the latest figures with the operation (`GET /v1/ops`, the CLI's
/// progress bar). Cheap: call it as the work advances. Copies made by the host's `clone-file`
/// are reported by the host itself.
pub fn progress(done: u64, total: u64) {
    crate::bindings::elara::driver::log::progress(done, total);
}

/// Log panics through the host before the instance traps, so the operator sees the message and
/// location instead of only "wasm trap: unreachable". Call it once, e.g. at the top of
/// `configure`; calling it again is harmless.
pub fn install_panic_hook() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            write(Level::Error, &format!("driver panicked: {info}"));
        }));
    });
}

/// Log at `trace` level, with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Trace, &::std::format!($($arg)*)) };
}

/// Log at `debug` level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

/// Log at `info` level, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// Log at `warn` level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// Log at `error` level, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)*)) };
}

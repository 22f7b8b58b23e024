//! The data of one instance's `Store`: its WASI context (only `/pool`), HTTP hooks, limits,
//! CPU meter and log sink, plus the `log` import.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::elara::driver::log::{self, Level};
use crate::hostfs::PoolDir;
use crate::net::HttpHooks;

/// Everything a store of one driver instance holds.
pub(crate) struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: HttpHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) cpu: CpuMeter,
    pub(crate) log: Arc<Mutex<LogSink>>,
    /// `None` in the configuration-less sandbox that answers `info` at load time.
    pub(crate) pool: Option<Arc<PoolDir>>,
    /// Where the current call's progress goes (the `progress` import, and the host's own copies
    /// in `clone-file`); set for the length of one call.
    pub(crate) progress: Option<ProgressFn>,
    /// How far the current call has come; shared with the wall-clock watch in `Sandbox::run`.
    pub(crate) advance: Arc<Mutex<Advance>>,
}

/// Receives a call's progress: `(done, total)` bytes. See [`crate::Backend::snapshot_create_with_progress`].
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A call's progress as the limits see it. Progress renews the call's CPU budget and
/// wall-clock timeout, so those bound a stall rather than the length of a copy that keeps
/// moving; but the reports come from the untrusted driver, so a renewal is bought only with
/// work the host can bound:
/// * the first report fixes the call's `total`, at most `bound` (what the call can move: the
///   volume's size, or [`crate::Limits::max_progress_bytes`]); a later report naming another
///   total renews nothing;
/// * `done` counts only up to that total, and renews only after each further `per_renewal`
///   bytes, so a call gets at most `total / per_renewal` renewals however often it reports;
/// * nothing renews past `max_call` after the call began, and the wall clock then stops it.
///
/// The host's own copies (`clone-file`) are work the host did itself: they renew the wall clock
/// (the guest is blocked, using no CPU), still within `max_call`.
pub(crate) struct Advance {
    call_started: Instant,
    /// The most bytes this call may claim to move; 0 for calls that move none.
    bound: u64,
    per_renewal: u64,
    max_call: Duration,
    /// The total of the first report (what counts is at most `bound`).
    total: Option<u64>,
    done: u64,
    /// `done` at the last renewal.
    renewed_at: u64,
    /// Whether a refused report was logged already this call (once is enough).
    warned: bool,
    /// When the limits were last renewed (the call's start if never).
    pub(crate) at: Instant,
}

/// What the limits made of one progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported {
    /// The report bought a fresh CPU budget and timeout.
    pub(crate) renews: bool,
    /// `(done, total)` as the host records it: the call's fixed total (at most the bound),
    /// `done` at most that.
    pub(crate) done: u64,
    pub(crate) total: u64,
    /// Why the report counted for nothing, the first time one did in this call.
    pub(crate) refused: Option<&'static str>,
}

impl Advance {
    /// A call that may claim to move up to `bound` bytes (0: none), renewing its limits after
    /// each `per_renewal` bytes reported, for at most `max_call`.
    pub(crate) fn new(bound: u64, per_renewal: u64, max_call: Duration) -> Self {
        let now = Instant::now();
        Advance {
            call_started: now,
            bound,
            per_renewal: per_renewal.max(1),
            max_call,
            total: None,
            done: 0,
            renewed_at: 0,
            warned: false,
            at: now,
        }
    }

    fn within_ceiling(&self) -> bool {
        self.call_started.elapsed() < self.max_call
    }

    /// Note the driver's report of `done` of `total` bytes.
    pub(crate) fn report(&mut self, done: u64, total: u64) -> Reported {
        let first = *self.total.get_or_insert(total);
        let fixed = first.min(self.bound);
        let done = done.min(fixed);
        let refused = if total != first {
            Some("its total differs from the call's first report")
        } else if first > self.bound {
            Some("its total is more than the call can move; only that much counts")
        } else {
            None
        };
        let mut renews = false;
        if total == first && done > self.done {
            self.done = done;
            if done - self.renewed_at >= self.per_renewal && self.within_ceiling() {
                self.renewed_at = done;
                self.at = Instant::now();
                renews = true;
            }
        }
        let refused = refused.filter(|_| !std::mem::replace(&mut self.warned, true));
        Reported {
            renews,
            done,
            total: fixed,
            refused,
        }
    }

    /// The host itself copied more of this call's data: renew the wall clock.
    pub(crate) fn host_copied(&mut self) {
        if self.within_ceiling() {
            self.at = Instant::now();
        }
    }

    /// When the call times out: `call_timeout` after the last renewal, and never later than
    /// `max_call` after it began. The second is true if the ceiling is what ends it.
    pub(crate) fn deadline(&self, call_timeout: Duration) -> (Instant, bool) {
        let renewed = self.at + call_timeout;
        let ceiling = self.call_started + self.max_call;
        if ceiling <= renewed {
            (ceiling, true)
        } else {
            (renewed, false)
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// [`StoreLimits`] (memory cap, trap on grow failure) that also remembers an exceeded memory
/// cap, so the trap can be reported in words.
pub(crate) struct MemoryLimiter {
    inner: StoreLimits,
    memory_bytes: usize,
    /// The size the guest asked for when it hit the cap.
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(memory_bytes: u64) -> Self {
        let memory_bytes = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
        MemoryLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(1 << 20)
                // Rust components hold one core instance; interpreted ones (Python) about 14.
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            memory_bytes,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = Some(desired);
            wasmtime::bail!(
                "memory limit of {} bytes exceeded: the driver tried to grow its memory to {desired} bytes",
                self.memory_bytes
            );
        }
        self.inner.memory_growing(current, desired, maximum)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Guest execution time of the current call, counted in epoch ticks.
///
/// The store's epoch deadline is always one tick ahead, and the deadline callback fires only
/// while wasm code is running. Each firing therefore means "the guest was executing when a
/// tick passed": time the guest spends blocked in a host call (an HTTP wait, `clone-file`)
/// costs at most one tick per blocking episode, because the fiber is suspended and only
/// notices the (possibly large) epoch jump once when it resumes.
pub(crate) struct CpuMeter {
    pub(crate) used_ticks: u64,
    pub(crate) budget_ticks: u64,
    pub(crate) exceeded: bool,
}

/// Where a backend's log output goes: `tracing` with target `driver` and `backend = name`,
/// capped per call. Shared by the `log` import and the captured stdout/stderr.
pub(crate) struct LogSink {
    backend: Arc<str>,
    cap: usize,
    used: usize,
    capped: bool,
    /// Partial lines of stdout (0) and stderr (1).
    partial: [Vec<u8>; 2],
    /// The last few stderr lines of this call, quoted in trap reports (panic messages land there).
    recent_stderr: std::collections::VecDeque<String>,
}

/// Longest partial stdout/stderr line kept before it is flushed as a line of its own.
const MAX_LINE: usize = 4096;

impl LogSink {
    pub(crate) fn new(backend: Arc<str>, cap: usize) -> Self {
        LogSink {
            backend,
            cap,
            used: 0,
            capped: false,
            partial: [Vec::new(), Vec::new()],
            recent_stderr: Default::default(),
        }
    }

    /// Start a new call: the cap applies afresh.
    pub(crate) fn reset(&mut self) {
        self.used = 0;
        self.capped = false;
        self.recent_stderr.clear();
    }

    /// The last stderr lines of this call (at most 3, without Rust's backtrace hint), joined.
    pub(crate) fn last_stderr(&self) -> Option<String> {
        if self.recent_stderr.is_empty() {
            None
        } else {
            Some(self.recent_stderr.iter().cloned().collect::<Vec<_>>().join(" / "))
        }
    }

    /// Emit one message if the per-call cap allows it (truncating the one that crosses it).
    pub(crate) fn emit(&mut self, level: Level, stream: &'static str, message: &str) {
        if self.capped {
            return;
        }
        let room = self.cap.saturating_sub(self.used);
        let mut msg = message;
        if msg.len() > room {
            let mut cut = room;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg = &msg[..cut];
        }
        self.used += msg.len();
        if !msg.is_empty() {
            let backend = &*self.backend;
            match level {
                Level::Trace => tracing::trace!(target: "driver", backend, stream, "{msg}"),
                Level::Debug => tracing::debug!(target: "driver", backend, stream, "{msg}"),
                Level::Info => tracing::info!(target: "driver", backend, stream, "{msg}"),
                Level::Warn => tracing::warn!(target: "driver", backend, stream, "{msg}"),
                Level::Error => tracing::error!(target: "driver", backend, stream, "{msg}"),
            }
        }
        if msg.len() < message.len() {
            self.capped = true;
            tracing::warn!(target: "driver", backend = &*self.backend, cap = self.cap,
                "log capped: the driver logged more than {} bytes in one call; the rest of this call's output is dropped",
                self.cap);
        }
    }

    /// Bytes written to stdout (`err == false`) or stderr: logged line by line.
    fn write_stdio(&mut self, err: bool, bytes: &[u8]) {
        let idx = usize::from(err);
        let (level, stream) = if err {
            (Level::Warn, "stderr")
        } else {
            (Level::Info, "stdout")
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.partial[idx]);
                    line.extend_from_slice(&rest[..nl.min(MAX_LINE)]);
                    rest = &rest[nl + 1..];
                    self.line(idx, level, stream, &line);
                }
                None => {
                    let room = MAX_LINE.saturating_sub(self.partial[idx].len());
                    self.partial[idx].extend_from_slice(&rest[..rest.len().min(room)]);
                    rest = &[];
                    if self.partial[idx].len() >= MAX_LINE {
                        let line = std::mem::take(&mut self.partial[idx]);
                        self.line(idx, level, stream, &line);
                    }
                }
            }
        }
    }

    fn line(&mut self, idx: usize, level: Level, stream: &'static str, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let trimmed = text.trim();
        if idx == 1 && !trimmed.is_empty() && !trimmed.starts_with("note: run with `RUST_BACKTRACE") {
            let mut keep = trimmed.to_string();
            let mut cut = keep.len().min(300);
            while !keep.is_char_boundary(cut) {
                cut -= 1;
            }
            keep.truncate(cut);
            if self.recent_stderr.len() == 3 {
                self.recent_stderr.pop_front();
            }
            self.recent_stderr.push_back(keep);
        }
        self.emit(level, stream, &text);
    }
}

impl log::Host for StoreState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.log.lock().unwrap().emit(level, "log", &message);
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        let r = self.advance.lock().unwrap().report(done, total);
        if r.renews {
            self.cpu.used_ticks = 0;
        }
        if let Some(why) = r.refused {
            let backend = self.log.lock().unwrap().backend.clone();
            tracing::warn!(target: "driver", backend = &*backend, done, total,
                fixed_total = r.total, "progress report ignored for the call's limits: {why}");
        }
        if let Some(report) = &self.progress {
            report(r.done, r.total);
        }
        Ok(())
    }
}

/// The guest's stdout or stderr: a WASI output stream that feeds the [`LogSink`].
#[derive(Clone)]
pub(crate) struct CapturedStdio {
    pub(crate) sink: Arc<Mutex<LogSink>>,
    pub(crate) stderr: bool,
}

impl IsTerminal for CapturedStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStdio {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedStdio {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedStdio {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.lock().unwrap().write_stdio(self.stderr, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CapturedStdio {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sink.lock().unwrap().write_stdio(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn progress_renews_per_bytes_up_to_what_the_call_can_move() {
        let mut a = Advance::new(256 * MIB, 64 * MIB, Duration::from_secs(3600));
        // Less than one renewal's worth: counted, not renewed.
        assert_eq!(
            a.report(10 * MIB, 256 * MIB),
            Reported {
                renews: false,
                done: 10 * MIB,
                total: 256 * MIB,
                refused: None
            }
        );
        assert!(a.report(64 * MIB, 256 * MIB).renews);
        assert!(!a.report(100 * MIB, 256 * MIB).renews, "36 MiB since the last renewal");
        assert!(a.report(128 * MIB, 256 * MIB).renews);
        // Going back renews nothing.
        assert!(!a.report(180 * MIB, 256 * MIB).renews);
        assert!(!a.report(170 * MIB, 256 * MIB).renews);
        assert!(a.report(192 * MIB, 256 * MIB).renews);
        // `done` past the total counts as the total: one last renewal, then none.
        assert!(a.report(u64::MAX, 256 * MIB).renews);
        assert_eq!(
            a.report(u64::MAX, 256 * MIB),
            Reported {
                renews: false,
                done: 256 * MIB,
                total: 256 * MIB,
                refused: None
            }
        );
    }

    #[test]
    fn a_total_past_the_bound_counts_as_the_bound_and_a_new_total_renews_nothing() {
        // u64::MAX on a call that can move 100 MiB: one renewal in all, however often reported.
        let mut a = Advance::new(100 * MIB, 64 * MIB, Duration::from_secs(3600));
        let first = a.report(64 * MIB, u64::MAX);
        assert!(first.renews);
        assert_eq!((first.done, first.total), (64 * MIB, 100 * MIB));
        assert!(
            first
                .refused
                .is_some_and(|why| why.contains("more than the call can move"))
        );
        let renewals = (2..100_000u64)
            .filter(|i| a.report(i * 64 * MIB, u64::MAX).renews)
            .count();
        assert_eq!(renewals, 0);

        // The first total is fixed: another one (larger, smaller) renews nothing.
        let mut a = Advance::new(u64::MAX, 64 * MIB, Duration::from_secs(3600));
        assert!(a.report(64 * MIB, 1 << 40).renews);
        let r = a.report(128 * MIB, 2 << 40);
        assert!(!r.renews && r.refused.is_some_and(|why| why.contains("differs")));
        assert!(!a.report(192 * MIB, 1 << 30).renews);
        assert!(a.report(128 * MIB, 1 << 40).renews, "the first total still counts");
        // Warned once per call, not per report.
        assert_eq!(a.report(256 * MIB, 3 << 40).refused, None);
    }

    #[test]
    fn nothing_renews_past_the_ceiling_and_the_deadline_keeps_to_it() {
        let mut a = Advance::new(u64::MAX, MIB, Duration::ZERO);
        assert!(!a.report(10 * MIB, 1 << 40).renews);
        let (when, ceiling) = a.deadline(Duration::from_secs(300));
        assert!(ceiling && when <= Instant::now());
        let a = Advance::new(0, MIB, Duration::from_secs(3600));
        let (when, ceiling) = a.deadline(Duration::from_secs(300));
        assert!(!ceiling && when > Instant::now() + Duration::from_secs(299));
        // A call that moves nothing gets no renewal from its reports.
        let mut a = Advance::new(0, MIB, Duration::from_secs(3600));
        assert!(!a.report(u64::MAX, u64::MAX).renews);
    }
}

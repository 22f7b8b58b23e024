//! Live progress of a long operation (a backup job: backup, restore or verify; a snapshot's or a
//! clone's copy in a driver): phase, bytes, blocks, rate, ETA. Workers bump atomics;
//! [`Progress::view`] turns them into the figures REST and the CLI show.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Counters shared by a job's workers.
#[derive(Debug)]
pub struct Progress {
    phase: Mutex<String>,
    started: Instant,
    phase_started: Mutex<Instant>,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub blocks_total: AtomicU64,
    pub blocks_done: AtomicU64,
    /// Blocks and (compressed) bytes actually sent to or fetched from the target.
    pub blocks_transferred: AtomicU64,
    pub bytes_transferred: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: Mutex::new("starting".into()),
            started: Instant::now(),
            phase_started: Mutex::new(Instant::now()),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            blocks_total: AtomicU64::new(0),
            blocks_done: AtomicU64::new(0),
            blocks_transferred: AtomicU64::new(0),
            bytes_transferred: AtomicU64::new(0),
        }
    }
}

/// Progress as shown over REST (and in the op record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    /// `snapshotting`, `cloning` and `mounting` (file volumes), `scanning`, `uploading`,
    /// `finalising`; `creating`, `downloading` (restore); `verifying`; `done`. A snapshot's or a
    /// clone's copy in a driver: `copying`.
    pub phase: String,
    /// Bytes of volume data (block backups) or of file content (file backups).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Blocks, or for file backups chunks (whose total grows while the files are cut).
    pub blocks_done: u64,
    pub blocks_total: u64,
    pub blocks_transferred: u64,
    pub bytes_transferred: u64,
    /// Bytes of the volume processed per second in this phase.
    pub rate_bytes_per_sec: u64,
    pub eta_secs: Option<u64>,
    pub elapsed_secs: f64,
}

impl Progress {
    /// Enter a new phase; the rate is measured per phase.
    pub fn phase(&self, name: &str) {
        *self.phase.lock().expect("progress lock") = name.to_string();
        *self.phase_started.lock().expect("progress lock") = Instant::now();
    }

    pub fn add_done(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Relaxed);
        self.blocks_done.fetch_add(1, Relaxed);
    }

    pub fn add_transferred(&self, bytes: u64) {
        self.bytes_transferred.fetch_add(bytes, Relaxed);
        self.blocks_transferred.fetch_add(1, Relaxed);
    }

    /// Forget the bytes counted so far (a new phase that counts its own).
    pub fn reset_bytes(&self) {
        self.bytes_done.store(0, Relaxed);
        self.bytes_total.store(0, Relaxed);
    }

    /// A sink for a driver call's progress (`done` of `total` bytes): it sets this progress's
    /// bytes, and passes the figures on to `also` if given.
    pub fn sink(self: &Arc<Self>, also: Option<elara_runtime::ProgressFn>) -> elara_runtime::ProgressFn {
        let me = self.clone();
        Arc::new(move |done, total| {
            me.bytes_total.store(total, Relaxed);
            me.bytes_done.store(done, Relaxed);
            if let Some(f) = &also {
                f(done, total);
            }
        })
    }

    pub fn view(&self) -> ProgressView {
        let phase_secs = self
            .phase_started
            .lock()
            .expect("progress lock")
            .elapsed()
            .as_secs_f64();
        let done = self.bytes_done.load(Relaxed);
        let total = self.bytes_total.load(Relaxed);
        let rate = if phase_secs > 0.0 {
            (done as f64 / phase_secs) as u64
        } else {
            0
        };
        let eta = (rate > 0 && total >= done).then(|| (total - done) / rate);
        ProgressView {
            phase: self.phase.lock().expect("progress lock").clone(),
            bytes_done: done,
            bytes_total: total,
            blocks_done: self.blocks_done.load(Relaxed),
            blocks_total: self.blocks_total.load(Relaxed),
            blocks_transferred: self.blocks_transferred.load(Relaxed),
            bytes_transferred: self.bytes_transferred.load(Relaxed),
            rate_bytes_per_sec: rate,
            eta_secs: eta,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

//! Write-behind state of one file.
//!
//! A FUSE WRITE is acknowledged to the kernel as soon as it is queued (up to [`WINDOW`] bytes per
//! file not yet answered by the server), so a writer keeps several NFS WRITEs in flight instead of
//! waiting a round trip per `write(2)`. What that costs, and how it is paid back:
//!
//! - Order: writes are numbered in the order the kernel sent them; one that overlaps an earlier
//!   write still in flight waits for it, so the server applies overlapping data in the writer's
//!   order.
//! - Size: until they are answered, attributes given to the kernel report at least the end of
//!   every queued write ([`WriteBack::size_floor`]), so the kernel never sees its file shrink.
//! - Errors: a write the server refused is remembered and returned by the next `write`, `fsync`
//!   and `close` (flush) of the file, as the kernel NFS client does.
//! - Durability: writes are UNSTABLE; the data is kept until a COMMIT answers with the same write
//!   verifier the WRITEs got, and written again (FILE_SYNC) if the verifier changed (the server
//!   restarted and may have lost it). A commit starts by itself once [`COMMIT_AT`] bytes are
//!   uncommitted, and writers wait while [`HOLD_MAX`] bytes are.

use std::sync::Mutex;

use bytes::Bytes;
use nfs3_client::nfs3_types::nfs3::writeverf3;
use tokio::sync::Notify;

/// Bytes per file acknowledged to the kernel but not yet answered by the server.
pub const WINDOW: u64 = 16 << 20;
/// Uncommitted bytes that start a COMMIT in the background.
pub const COMMIT_AT: u64 = 32 << 20;
/// Uncommitted bytes (kept for a possible resend) past which writers wait for a COMMIT.
pub const HOLD_MAX: u64 = 96 << 20;

/// One queued write, from the moment the kernel sent it until the server answered.
#[derive(Debug, Clone, Copy)]
struct Queued {
    seq: u64,
    start: u64,
    end: u64,
}

/// A write the server took UNSTABLE: kept until a COMMIT with the same verifier.
pub struct Unstable {
    pub offset: u64,
    pub data: Bytes,
    pub verf: writeverf3,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    queued: Vec<Queued>,
    /// Bytes acknowledged to the kernel and not yet answered.
    acked: u64,
    /// The first error of a write-behind WRITE, not yet reported.
    error: Option<i32>,
    unstable: Vec<Unstable>,
    unstable_bytes: u64,
    /// Bytes in the batch a running COMMIT works on (still held).
    committing_bytes: u64,
    committing: bool,
    /// Data was written since the last COMMIT (or since open): flush must COMMIT.
    dirty: bool,
}

/// Write-behind bookkeeping of one file (see the module's doc).
#[derive(Default)]
pub struct WriteBack {
    st: Mutex<State>,
    /// Woken whenever a write completes or a COMMIT ends.
    changed: Notify,
}

/// A place in the file's write order.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    seq: u64,
    start: u64,
    end: u64,
}

impl Ticket {
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

impl WriteBack {
    /// Take a place in the write order (call in the order the kernel sent the writes).
    pub fn enqueue(&self, offset: u64, len: u64) -> Ticket {
        let mut st = self.st.lock().unwrap();
        let seq = st.next_seq;
        st.next_seq += 1;
        let q = Queued {
            seq,
            start: offset,
            end: offset + len,
        };
        st.queued.push(q);
        st.dirty = true;
        Ticket {
            seq,
            start: q.start,
            end: q.end,
        }
    }

    /// Wait until `check` holds, re-checking whenever a write or COMMIT finishes.
    async fn wait_for(&self, mut check: impl FnMut(&mut State) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if check(&mut self.st.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    }

    /// Wait for room in the window (and under the uncommitted hold), then count `t` as
    /// acknowledged. Returns an earlier write's error instead, if one is pending.
    pub async fn admit(&self, t: &Ticket) -> Result<(), i32> {
        let mut err = None;
        self.wait_for(|st| {
            if let Some(e) = st.error.take() {
                err = Some(e);
                return true;
            }
            let held = st.unstable_bytes + st.committing_bytes;
            if (st.acked == 0 || st.acked + t.len() <= WINDOW)
                && (held < HOLD_MAX || st.acked == 0 && !st.committing)
            {
                st.acked += t.len();
                return true;
            }
            false
        })
        .await;
        match err {
            Some(e) => {
                self.abandon(t);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Wait until no earlier write overlapping `t` is still queued.
    pub async fn wait_turn(&self, t: &Ticket) {
        self.wait_for(|st| {
            !st.queued
                .iter()
                .any(|q| q.seq < t.seq && q.start < t.end && t.start < q.end)
        })
        .await;
    }

    /// `t` will not be sent (it was refused before being acknowledged).
    fn abandon(&self, t: &Ticket) {
        let mut st = self.st.lock().unwrap();
        st.queued.retain(|q| q.seq != t.seq);
        drop(st);
        self.changed.notify_waiters();
    }

    /// The server answered `t`: `Ok` with what it took UNSTABLE (to hold until COMMIT), or the
    /// errno to report later. Returns whether a background COMMIT should start now.
    pub fn complete(&self, t: &Ticket, res: Result<Vec<Unstable>, i32>) -> bool {
        let mut st = self.st.lock().unwrap();
        st.queued.retain(|q| q.seq != t.seq);
        st.acked = st.acked.saturating_sub(t.len());
        match res {
            Ok(held) => {
                for u in held {
                    st.unstable_bytes += u.data.len() as u64;
                    st.unstable.push(u);
                }
            }
            Err(e) => {
                st.error.get_or_insert(e);
            }
        }
        let start = st.unstable_bytes >= COMMIT_AT && !st.committing;
        drop(st);
        self.changed.notify_waiters();
        start
    }

    /// The lowest size the kernel may be told while writes are queued: the end of the furthest.
    pub fn size_floor(&self) -> u64 {
        self.st
            .lock()
            .unwrap()
            .queued
            .iter()
            .map(|q| q.end)
            .max()
            .unwrap_or(0)
    }

    pub fn busy(&self) -> bool {
        let st = self.st.lock().unwrap();
        !st.queued.is_empty() || !st.unstable.is_empty() || st.committing
    }

    /// Wait until every queued write has been answered.
    pub async fn drain(&self) {
        self.wait_for(|st| st.queued.is_empty()).await;
    }

    /// Start a COMMIT: wait for a running one, then take the held writes. `None` if there is
    /// nothing to commit (and `force` is false).
    pub async fn begin_commit(&self, force: bool) -> Option<Vec<Unstable>> {
        let mut batch = None;
        self.wait_for(|st| {
            if st.committing {
                return false;
            }
            if st.unstable.is_empty() && !(force && st.dirty) {
                return true;
            }
            st.committing = true;
            st.dirty = false;
            st.committing_bytes = st.unstable_bytes;
            st.unstable_bytes = 0;
            batch = Some(std::mem::take(&mut st.unstable));
            true
        })
        .await;
        batch
    }

    /// The COMMIT begun by [`WriteBack::begin_commit`] ended: `Ok` (its batch is durable), or
    /// failed with an errno (reported later) and the batch is held again for the next COMMIT.
    pub fn end_commit(&self, res: Result<(), (i32, Vec<Unstable>)>) {
        let mut st = self.st.lock().unwrap();
        st.committing = false;
        st.committing_bytes = 0;
        if let Err((e, mut batch)) = res {
            st.error.get_or_insert(e);
            st.dirty = true;
            // Older than what completed meanwhile: it goes first, so a resend keeps the order.
            st.unstable_bytes += batch.iter().map(|u| u.data.len() as u64).sum::<u64>();
            batch.append(&mut st.unstable);
            st.unstable = batch;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Take the pending error of the file, if any.
    pub fn take_error(&self) -> Option<i32> {
        self.st.lock().unwrap().error.take()
    }

    /// Whether anything was written since the last COMMIT.
    pub fn is_dirty(&self) -> bool {
        let st = self.st.lock().unwrap();
        st.dirty || !st.unstable.is_empty()
    }
}

//! Write-behind state of one file.
//!
//! A FUSE WRITE is acknowledged to the kernel as soon as it is queued (up to [`WINDOW`] bytes per
//! file not yet answered by the server), so a writer keeps several NFS WRITEs in flight instead of
//! waiting a round trip per `write(2)`. What that costs, and how it is paid back:
//!
//! - Gathering: contiguous writes that arrive while a WRITE of the file is in flight are gathered
//!   into one WRITE of up to the server's write size (like Nagle: a write goes out at once when
//!   nothing is in flight, or when its batch is full), so a program writing 8 KiB at a time still
//!   sends 1 MiB WRITEs.
//! - Order: writes are numbered in the order the kernel sent them; one that overlaps an earlier
//!   write still in flight waits for it, so the server applies overlapping data in the writer's
//!   order.
//! - Size: attributes given to the kernel report at least the end of every queued write, and of
//!   every write answered after the attributes were asked for ([`WriteBack::floor`]): the
//!   kernel, which grew the file when the write was acknowledged, never sees it shrink.
//! - Errors: a write the server refused is remembered and returned by the next `write`, `fsync`
//!   and `close` (flush) of the file, as the kernel NFS client does.
//! - Durability: writes are UNSTABLE; the data is kept until a COMMIT answers with the same write
//!   verifier the WRITEs got, and written again (FILE_SYNC) if the verifier changed (the server
//!   restarted and may have lost it). A commit starts by itself once [`COMMIT_AT`] bytes are
//!   uncommitted, and writers wait while [`HOLD_MAX`] bytes are.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
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

/// Contiguous writes not yet sent, to go out as one WRITE.
struct Gather {
    start: u64,
    buf: BytesMut,
    tickets: Vec<Ticket>,
}

/// Writes sent as one WRITE (or more, if the server takes less).
pub struct Batch {
    pub offset: u64,
    pub data: Bytes,
    tickets: Vec<Ticket>,
    seq: u64,
}

impl Gather {
    fn into_batch(self) -> Batch {
        let seq = self.tickets[0].seq;
        Batch {
            offset: self.start,
            data: self.buf.freeze(),
            tickets: self.tickets,
            seq,
        }
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    gather: Option<Gather>,
    /// Batches being sent.
    sending: usize,
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
    /// The end of the furthest write answered since the last truncation, and the mount's count
    /// of answered batches when the last one of this file was (see `floor`).
    completed_end: u64,
    last_answered: u64,
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
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

impl WriteBack {
    /// Take a place in the write order (call in the order the kernel sent the writes) and
    /// gather `data`; returns the batches to send now. `alone`: the write goes out by itself
    /// (O_SYNC: the caller sends it, see [`WriteBack::single`]); what was gathered goes first.
    pub fn queue(&self, offset: u64, data: &[u8], max: usize, alone: bool) -> (Ticket, Vec<Batch>) {
        let mut st = self.st.lock().unwrap();
        let seq = st.next_seq;
        st.next_seq += 1;
        let t = Ticket {
            seq,
            start: offset,
            end: offset + data.len() as u64,
        };
        st.queued.push(Queued {
            seq,
            start: t.start,
            end: t.end,
        });
        st.dirty = true;
        let mut out = Vec::new();
        if alone {
            out.extend(st.gather.take().map(Gather::into_batch));
            st.sending += out.len();
            return (t, out);
        }
        let fits = st
            .gather
            .as_ref()
            .is_some_and(|g| g.start + g.buf.len() as u64 == offset && g.buf.len() + data.len() <= max);
        if fits {
            let g = st.gather.as_mut().expect("checked");
            g.buf.extend_from_slice(data);
            g.tickets.push(t);
        } else {
            out.extend(st.gather.take().map(Gather::into_batch));
            let mut buf = BytesMut::with_capacity(max.max(data.len()));
            buf.extend_from_slice(data);
            st.gather = Some(Gather {
                start: offset,
                buf,
                tickets: vec![t],
            });
        }
        let full = st.gather.as_ref().is_some_and(|g| g.buf.len() >= max);
        if full || st.sending + out.len() == 0 {
            out.extend(st.gather.take().map(Gather::into_batch));
        }
        st.sending += out.len();
        (t, out)
    }

    /// A batch of one O_SYNC write (its ticket from [`WriteBack::queue`] with `alone`).
    pub fn single(&self, t: Ticket, data: Bytes) -> Batch {
        self.st.lock().unwrap().sending += 1;
        Batch {
            offset: t.start,
            data,
            tickets: vec![t],
            seq: t.seq,
        }
    }

    /// What is gathered, to send now (someone waits for it: flush, read, truncate).
    pub fn kick(&self) -> Option<Batch> {
        let mut st = self.st.lock().unwrap();
        let b = st.gather.take().map(Gather::into_batch);
        st.sending += usize::from(b.is_some());
        b
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
        let mut res = None;
        self.wait_for(|st| {
            res = Self::admit_now(st, t);
            res.is_some()
        })
        .await;
        res.expect("admitted")
    }

    /// [`WriteBack::admit`] without waiting: `None` if `t` must wait for room.
    pub fn try_admit(&self, t: &Ticket) -> Option<Result<(), i32>> {
        Self::admit_now(&mut self.st.lock().unwrap(), t)
    }

    fn admit_now(st: &mut State, t: &Ticket) -> Option<Result<(), i32>> {
        if let Some(e) = st.error.take() {
            // It is sent all the same (it is gathered already); counted like the others.
            st.acked += t.len();
            return Some(Err(e));
        }
        let held = st.unstable_bytes + st.committing_bytes;
        let room = st.acked == 0 || st.acked + t.len() <= WINDOW;
        if room && (held < HOLD_MAX || st.acked == 0 && !st.committing) {
            st.acked += t.len();
            return Some(Ok(()));
        }
        None
    }

    /// Wait until no earlier write overlapping the batch is still queued.
    pub async fn wait_turn(&self, b: &Batch) {
        let (start, end) = (b.offset, b.offset + b.data.len() as u64);
        self.wait_for(|st| {
            !st.queued
                .iter()
                .any(|q| q.seq < b.seq && q.start < end && start < q.end)
        })
        .await;
    }

    /// The server answered batch `b`: `Ok` with what it took UNSTABLE (to hold until COMMIT), or
    /// the errno to report later. Returns whether a background COMMIT should start now, and the
    /// gathered writes to send next (the last batch in flight sends what gathered meanwhile).
    /// `answered` (the mount's count of answered batches) goes up under the same lock.
    pub fn complete(&self, b: &Batch, res: Result<Vec<Unstable>, i32>, answered: &AtomicU64) -> (bool, Option<Batch>) {
        let mut st = self.st.lock().unwrap();
        st.last_answered = answered.fetch_add(1, Ordering::SeqCst) + 1;
        st.completed_end = st.completed_end.max(b.offset + b.data.len() as u64);
        let done = |q: &Queued| b.tickets.iter().any(|t| t.seq == q.seq);
        st.queued.retain(|q| !done(q));
        let len: u64 = b.tickets.iter().map(Ticket::len).sum();
        st.acked = st.acked.saturating_sub(len);
        st.sending -= 1;
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
        let next = if st.sending == 0 {
            st.gather.take().map(Gather::into_batch)
        } else {
            None
        };
        st.sending += usize::from(next.is_some());
        drop(st);
        self.changed.notify_waiters();
        (start, next)
    }

    /// The lowest size the kernel may be told, for attributes asked for when the mount's count
    /// of answered batches was `since`: the end of the furthest write still queued, and if a
    /// batch of this file was answered since, of the furthest answered (the attributes may
    /// predate it).
    pub fn floor(&self, since: u64) -> u64 {
        let st = self.st.lock().unwrap();
        let queued = st.queued.iter().map(|q| q.end).max().unwrap_or(0);
        if st.last_answered > since {
            queued.max(st.completed_end)
        } else {
            queued
        }
    }

    /// The file was truncated: sizes of earlier writes no longer count.
    pub fn truncated(&self) {
        self.st.lock().unwrap().completed_end = 0;
    }

    pub fn busy(&self) -> bool {
        let st = self.st.lock().unwrap();
        !st.queued.is_empty() || !st.unstable.is_empty() || st.committing
    }

    /// Wait until every queued write has been answered (after [`WriteBack::kick`]).
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MAX: usize = 1 << 20;

    fn held(b: &Batch) -> Vec<Unstable> {
        vec![Unstable {
            offset: b.offset,
            data: b.data.clone(),
            verf: writeverf3([1; 8]),
        }]
    }

    #[test]
    fn small_writes_gather_while_one_is_in_flight() {
        let wb = WriteBack::default();
        let n = AtomicU64::new(1);
        // Nothing in flight: the first write goes out alone, at once.
        let (_, first) = wb.queue(0, &[1; 8192], MAX, false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].data.len(), 8192);
        // The next ones gather behind it...
        for i in 1..10u64 {
            let (_, out) = wb.queue(i * 8192, &[2; 8192], MAX, false);
            assert!(out.is_empty());
        }
        // ...and go out as one WRITE when it is answered.
        let (_, next) = wb.complete(&first[0], Ok(held(&first[0])), &n);
        let next = next.expect("the gathered batch");
        assert_eq!((next.offset, next.data.len()), (8192, 9 * 8192));
        // A full batch goes at once even with another in flight; a gap starts a new batch.
        let (_, out) = wb.queue(10 * 8192, &vec![3; MAX], MAX, false);
        assert_eq!(out.len(), 1, "a full batch is not held back");
        let (_, out) = wb.queue(50 << 20, &[4; 100], MAX, false);
        assert!(out.is_empty());
        assert!(wb.kick().is_some_and(|b| b.offset == 50 << 20));
        assert!(wb.kick().is_none());
    }

    #[test]
    fn the_size_floor_covers_queued_and_lately_answered_writes() {
        let wb = WriteBack::default();
        let n = AtomicU64::new(1);
        let (_, out) = wb.queue(0, &[0; 1000], MAX, false);
        assert_eq!(wb.floor(n.load(Ordering::SeqCst)), 1000);
        let since = n.load(Ordering::SeqCst);
        wb.complete(&out[0], Ok(vec![]), &n);
        // Attributes asked for before the answer may predate it; after it, they do not.
        assert_eq!(wb.floor(since), 1000);
        assert_eq!(wb.floor(n.load(Ordering::SeqCst)), 0);
        wb.truncated();
        assert_eq!(wb.floor(since), 0);
    }

    #[test]
    fn the_window_limits_what_is_acknowledged_ahead() {
        let wb = WriteBack::default();
        let mut tickets = Vec::new();
        for i in 0..(WINDOW / MAX as u64) {
            let (t, _) = wb.queue(i * MAX as u64, &vec![0; MAX], MAX, false);
            assert_eq!(wb.try_admit(&t), Some(Ok(())));
            tickets.push(t);
        }
        let (t, _) = wb.queue(WINDOW, &vec![0; MAX], MAX, false);
        assert_eq!(wb.try_admit(&t), None, "past the window the writer waits");
    }

    #[tokio::test]
    async fn an_overlapping_write_waits_for_the_earlier_one() {
        let wb = std::sync::Arc::new(WriteBack::default());
        let n = AtomicU64::new(1);
        let (_, a) = wb.queue(0, &[1; 4096], MAX, false);
        let (tb, flushed) = wb.queue(1000, &[2; 100], MAX, true); // O_SYNC: its own batch
        assert!(flushed.is_empty());
        let b = wb.single(tb, Bytes::from_static(&[2; 100]));
        let waiting = {
            let wb = wb.clone();
            tokio::spawn(async move { wb.wait_turn(&b).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "sent before the write it overlaps");
        wb.complete(&a[0], Ok(vec![]), &n);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_commit_holds_its_data_again_and_reports_once() {
        let wb = WriteBack::default();
        let n = AtomicU64::new(1);
        let (_, a) = wb.queue(0, &[1; 10], MAX, false);
        wb.complete(&a[0], Ok(held(&a[0])), &n);
        let batch = wb.begin_commit(true).await.expect("something to commit");
        assert_eq!(batch.len(), 1);
        wb.end_commit(Err((libc::EIO, batch)));
        assert_eq!(wb.take_error(), Some(libc::EIO));
        assert_eq!(wb.take_error(), None);
        let again = wb.begin_commit(false).await.expect("held again");
        assert_eq!(again[0].data.len(), 10);
        wb.end_commit(Ok(()));
        assert!(!wb.is_dirty());
    }
}

//! ONC-RPC over TCP with many calls in flight, matched by XID, over a small pool of connections.
//!
//! `nfs3_client` makes one call at a time per connection (send, wait, send the next), which leaves
//! the server idle between calls; a FUSE file system has many callers at once (readahead, parallel
//! readers, write-behind). Like `drivers/nfs/src/pipe.rs`, this module builds the messages with
//! `nfs3_types` and matches replies by XID, but it keeps each connection open with a reader and a
//! writer task, so any number of tasks can call at once.
//!
//! Failure model: every call has a deadline ([`RpcClient::timeout`]); a call not answered by then
//! fails with [`RpcError::Timeout`] (the file system answers EIO). A connection that breaks fails
//! its calls over to a new connection (the same XID and bytes are sent again, so a server's
//! duplicate request cache can recognise a retransmission); connecting again backs off briefly
//! after each failure, so an outage costs a few connection attempts a second, not a busy loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nfs3_client::nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, call_body, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_client::nfs3_types::xdr_codec::{Pack, Unpack};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// No reply within the deadline (the server is down, unreachable or stuck).
    #[error("{server}: no reply within {timeout:?}{last}")]
    Timeout {
        server: String,
        timeout: Duration,
        last: String,
    },
    /// The server answered something unusable (an RPC-level rejection, undecodable XDR).
    #[error("{server}: {msg}")]
    Protocol { server: String, msg: String },
}

/// The connection a call went out on broke before its reply came.
#[derive(Debug, Clone)]
struct Broken(String);

/// A reply: the whole record and where the procedure's result starts in it.
pub struct Reply {
    buf: Vec<u8>,
    pos: usize,
}

impl Reply {
    /// The procedure's result, undecoded.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Decode the result as `R`.
    pub fn decode<R: Unpack>(&self) -> Result<R, String> {
        let mut input = self.body();
        R::unpack(&mut input)
            .map(|(r, _)| r)
            .map_err(|e| format!("undecodable result: {e}"))
    }
}

type Waiter = oneshot::Sender<Result<Vec<u8>, Broken>>;

/// One TCP connection: a writer task sends queued messages, a reader task hands each reply to
/// the caller waiting for its XID.
struct Conn {
    out: mpsc::UnboundedSender<Vec<Bytes>>,
    /// Callers waiting for a reply, by XID; `None` once the connection broke.
    pending: Mutex<Option<HashMap<u32, Waiter>>>,
    /// When the last reply arrived (ms since `epoch`).
    last_rx: AtomicU64,
    epoch: Instant,
    closed: AtomicBool,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Register a waiter for `xid`; `None` if the connection already broke.
    fn register(&self, xid: u32) -> Option<oneshot::Receiver<Result<Vec<u8>, Broken>>> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap();
        pending.as_mut()?.insert(xid, tx);
        Some(rx)
    }

    fn unregister(&self, xid: u32) {
        if let Some(p) = self.pending.lock().unwrap().as_mut() {
            p.remove(&xid);
        }
    }

    /// Mark the connection broken, fail every waiter, stop both tasks.
    fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let waiters = self.pending.lock().unwrap().take().unwrap_or_default();
        for (_, w) in waiters {
            let _ = w.send(Err(Broken(why.to_string())));
        }
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A connection slot of the pool.
#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<Conn>>,
    /// Consecutive failed connection attempts, and when the next one may start.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// A client of one RPC program on one server.
pub struct RpcClient {
    addr: SocketAddr,
    server: String,
    prog: u32,
    vers: u32,
    cred: opaque_auth<'static>,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    xid: AtomicU32,
    /// Deadline of each call.
    pub timeout: Duration,
}

/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const ZERO_PAD: [u8; 4] = [0; 4];
/// The largest reply taken (a 1 MiB READ plus its header, with room to spare).
const MAX_RECORD: u64 = 16 << 20;

impl RpcClient {
    pub fn new(
        addr: SocketAddr,
        prog: u32,
        vers: u32,
        cred: opaque_auth<'static>,
        connections: usize,
        timeout: Duration,
    ) -> RpcClient {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u32 ^ std::process::id().rotate_left(16))
            .unwrap_or(1);
        RpcClient {
            addr,
            server: addr.to_string(),
            prog,
            vers,
            cred,
            slots: (0..connections.max(1)).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
            xid: AtomicU32::new(seed),
            timeout,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Encode a call: the record marker, the RPC header and `args`, then `tail` (already XDR:
    /// the caller packs the opaque's length into `args`) and its padding.
    fn encode(&self, xid: u32, proc: u32, args: &impl Pack, tail: Option<Bytes>) -> Result<Vec<Bytes>, RpcError> {
        let msg = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: RPC_VERSION_2,
                prog: self.prog,
                vers: self.vers,
                proc,
                cred: self.cred.borrow(),
                verf: opaque_auth::default(),
            }),
        };
        let tail_len = tail.as_ref().map_or(0, |t| t.len());
        let pad = (4 - tail_len % 4) % 4;
        let len = msg.packed_size() + args.packed_size() + tail_len + pad;
        let mut head = Vec::with_capacity(4 + msg.packed_size() + args.packed_size());
        head.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
        msg.pack(&mut head)
            .and_then(|_| args.pack(&mut head))
            .map_err(|e| RpcError::Protocol {
                server: self.server.clone(),
                msg: format!("encoding a call: {e}"),
            })?;
        let mut parts = vec![Bytes::from(head)];
        if let Some(t) = tail {
            parts.push(t);
            if pad > 0 {
                parts.push(Bytes::from_static(&ZERO_PAD[..pad]));
            }
        }
        Ok(parts)
    }

    /// Call procedure `proc` with `args` (and for WRITE, the data as `tail`).
    pub async fn call(&self, proc: u32, args: &impl Pack, tail: Option<Bytes>) -> Result<Reply, RpcError> {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let parts = self.encode(xid, proc, args, tail)?;
        let deadline = Instant::now() + self.timeout;
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut last = String::new();
        loop {
            let conn = match tokio::time::timeout_at(deadline, self.connection(slot, deadline)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => return Err(self.timed_out(&last)),
            };
            let Some(rx) = conn.register(xid) else {
                continue;
            };
            let sent_ms = conn.now_ms();
            if conn.out.send(parts.clone()).is_err() {
                conn.unregister(xid);
                continue;
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(buf))) => return self.parse(buf),
                Ok(Ok(Err(Broken(why)))) => {
                    tracing::debug!(server = %self.server, xid, "connection broke ({why}); sending the call again");
                    last = why;
                }
                Ok(Err(_)) => last = "connection closed".into(),
                Err(_) => {
                    conn.unregister(xid);
                    // Nothing at all came back on this connection since the call went out: it
                    // is likely dead (a half-open TCP connection never errors); start afresh.
                    if conn.last_rx.load(Ordering::Relaxed) < sent_ms {
                        conn.close("no replies; dropping the connection");
                    }
                    return Err(self.timed_out(&last));
                }
            }
        }
    }

    fn timed_out(&self, last: &str) -> RpcError {
        RpcError::Timeout {
            server: self.server.clone(),
            timeout: self.timeout,
            last: if last.is_empty() {
                String::new()
            } else {
                format!(" (last error: {last})")
            },
        }
    }

    fn parse(&self, buf: Vec<u8>) -> Result<Reply, RpcError> {
        let proto = |msg: String| RpcError::Protocol {
            server: self.server.clone(),
            msg,
        };
        let mut input = &buf[..];
        let (msg, _) = rpc_msg::unpack(&mut input).map_err(|e| proto(format!("undecodable RPC reply: {e}")))?;
        let pos = buf.len() - input.len();
        match msg.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(r)) => match r.reply_data {
                accept_stat_data::SUCCESS => Ok(Reply { buf, pos }),
                other => Err(proto(format!("the server did not run the call: {other:?}"))),
            },
            msg_body::REPLY(reply_body::MSG_DENIED(r)) => Err(proto(format!("call denied: {r:?}"))),
            msg_body::CALL(_) => Err(proto("the server sent a call, not a reply".into())),
        }
    }

    /// The slot's live connection, or a new one (after the back-off of earlier failures).
    async fn connection(&self, slot: &Slot, deadline: Instant) -> Result<Arc<Conn>, String> {
        let mut st = slot.state.lock().await;
        if let Some(c) = &st.conn {
            if !c.closed.load(Ordering::SeqCst) {
                return Ok(c.clone());
            }
            st.conn = None;
        }
        if let Some(at) = st.retry_at {
            // The caller's deadline (timeout_at around this) cuts a wait that would outlast it.
            tokio::time::sleep_until(at.min(deadline)).await;
        }
        match connect(self.addr).await {
            Ok(stream) => {
                if st.failures > 0 {
                    tracing::info!(server = %self.server, "connected again after {} failed attempts", st.failures);
                }
                st.failures = 0;
                st.retry_at = None;
                let conn = spawn_conn(stream);
                st.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let backoff = MIN_BACKOFF.saturating_mul(1 << st.failures.min(5)).min(MAX_BACKOFF);
                st.failures += 1;
                st.retry_at = Some(Instant::now() + backoff);
                let msg = format!("connecting to {}: {e}", self.server);
                if st.failures == 1 || st.last_error != msg {
                    tracing::warn!("{msg}");
                }
                st.last_error = msg.clone();
                Err(msg)
            }
        }
    }
}

/// Connect to `addr`; as root from a reserved port (below 1024), as servers exporting with
/// `secure` (Linux knfsd's default) require, falling back to any port.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let start = (std::process::id() as u16).wrapping_mul(7919);
        for i in 0..24u16 {
            let port = 600 + (start.wrapping_add(i.wrapping_mul(37)) % 424);
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            let local = SocketAddr::new(
                if addr.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                },
                port,
            );
            if socket.bind(local).is_err() {
                continue;
            }
            match socket.connect(addr).await {
                Ok(s) => return Ok(tune(s)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrNotAvailable
                        || e.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
    TcpStream::connect(addr).await.map(tune)
}

fn tune(s: TcpStream) -> TcpStream {
    let _ = s.set_nodelay(true);
    s
}

fn spawn_conn(stream: TcpStream) -> Arc<Conn> {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        out: tx,
        pending: Mutex::new(Some(HashMap::new())),
        last_rx: AtomicU64::new(0),
        epoch: Instant::now(),
        closed: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
    });
    let r = tokio::spawn(read_loop(conn.clone(), rd));
    let w = tokio::spawn(write_loop(conn.clone(), rx, wr));
    conn.tasks.lock().unwrap().extend([r.abort_handle(), w.abort_handle()]);
    if conn.closed.load(Ordering::SeqCst) {
        r.abort();
        w.abort();
    }
    conn
}

async fn read_loop(conn: Arc<Conn>, rd: OwnedReadHalf) {
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let why = loop {
        let mut record = Vec::new();
        let res: std::io::Result<()> = async {
            loop {
                let marker = rd.read_u32().await?;
                let len = u64::from(marker & 0x7fff_ffff);
                if record.len() as u64 + len > MAX_RECORD {
                    return Err(std::io::Error::other(format!("a reply of over {MAX_RECORD} bytes")));
                }
                record.reserve(len as usize);
                let n = (&mut rd).take(len).read_to_end(&mut record).await?;
                if (n as u64) < len {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if marker & 0x8000_0000 != 0 {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = res {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the server closed the connection".to_string()
            } else {
                format!("reading: {e}")
            };
        }
        if record.len() < 4 {
            break "a reply too short to hold an XID".to_string();
        }
        conn.last_rx.store(conn.now_ms().max(1), Ordering::Relaxed);
        let xid = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        let waiter = conn.pending.lock().unwrap().as_mut().and_then(|p| p.remove(&xid));
        if let Some(w) = waiter {
            let _ = w.send(Ok(record));
        }
        // else: the reply to a call that timed out meanwhile.
    };
    tracing::debug!("NFS connection closed: {why}");
    conn.close(&why);
}

async fn write_loop(conn: Arc<Conn>, mut rx: mpsc::UnboundedReceiver<Vec<Bytes>>, wr: OwnedWriteHalf) {
    let mut w = BufWriter::with_capacity(64 << 10, wr);
    let res: std::io::Result<()> = async {
        while let Some(parts) = rx.recv().await {
            for p in &parts {
                w.write_all(p).await?;
            }
            while let Ok(parts) = rx.try_recv() {
                for p in &parts {
                    w.write_all(p).await?;
                }
            }
            w.flush().await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        conn.close(&format!("sending: {e}"));
    }
}

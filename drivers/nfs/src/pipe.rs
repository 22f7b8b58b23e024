//! Bulk data with several READs or WRITEs in flight on one connection.
//!
//! `nfs3_client` makes one call at a time: send, wait for the reply, send the next. For the small
//! calls that manage a volume that is fine; for copying a tree it leaves the server idle between
//! calls (a serial 1 MiB WRITE loop measured ~4x slower than libnfs's `nfs-cp`). A [`Pipe`] is a
//! second TCP connection to the NFS program on which the driver sends a window of READs or WRITEs
//! and then collects their replies, matched by XID (a multi-threaded server may answer out of
//! order). Messages are built and parsed with `nfs3_types`, the same XDR types `nfs3_client` uses.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream};

use nfs3_client::nfs3_types::nfs3::{
    NFS_PROGRAM, PROGRAM, READ3args, READ3res, VERSION, WRITE3args, WRITE3res, nfs_fh3, stable_how,
};
use nfs3_client::nfs3_types::rpc::{
    RPC_VERSION_2, accept_stat_data, call_body, fragment_header, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

use crate::client::{NfsError, NfsResult, check_status};

/// A connection for pipelined READ and WRITE calls.
pub struct Pipe {
    stream: TcpStream,
    xid: u32,
    credential: opaque_auth<'static>,
}

impl Pipe {
    pub fn connect(addr: SocketAddr, credential: opaque_auth<'static>) -> NfsResult<Pipe> {
        let stream = TcpStream::connect(addr).map_err(|e| NfsError::Transport(format!("connecting to {addr}: {e}")))?;
        let _ = stream.set_read_timeout(Some(crate::client::IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(crate::client::IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        Ok(Pipe {
            stream,
            xid: 0,
            credential,
        })
    }

    /// Send one call; returns its XID.
    fn send<A: Pack>(&mut self, proc: NFS_PROGRAM, args: &A, what: &str) -> NfsResult<u32> {
        self.xid = self.xid.wrapping_add(1);
        let msg = rpc_msg {
            xid: self.xid,
            body: msg_body::CALL(call_body {
                rpcvers: RPC_VERSION_2,
                prog: PROGRAM,
                vers: VERSION,
                proc: proc as u32,
                cred: self.credential.borrow(),
                verf: opaque_auth::default(),
            }),
        };
        let len = msg.packed_size() + args.packed_size();
        let mut buf = Vec::with_capacity(len + 4);
        let header = fragment_header::new(len as u32, true);
        let packed = header
            .pack(&mut buf)
            .and_then(|_| msg.pack(&mut buf))
            .and_then(|_| args.pack(&mut buf));
        packed.map_err(|e| NfsError::Protocol(format!("{what}: encoding the call: {e}")))?;
        self.stream
            .write_all(&buf)
            .map_err(|e| NfsError::Transport(format!("{what}: {e}")))?;
        Ok(self.xid)
    }

    /// Receive one reply: its XID and the undecoded result body.
    fn recv(&mut self, what: &str) -> NfsResult<(u32, Cursor<Vec<u8>>)> {
        let io = |e: std::io::Error| NfsError::Transport(format!("{what}: {e}"));
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head).map_err(io)?;
            let header = fragment_header::from(head);
            let start = body.len();
            body.resize(start + header.fragment_length() as usize, 0);
            self.stream.read_exact(&mut body[start..]).map_err(io)?;
            if header.eof() {
                break;
            }
        }
        let mut cursor = Cursor::new(body);
        let (msg, _) =
            rpc_msg::unpack(&mut cursor).map_err(|e| NfsError::Protocol(format!("{what}: bad reply: {e}")))?;
        match msg.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(reply)) => match reply.reply_data {
                accept_stat_data::SUCCESS => Ok((msg.xid, cursor)),
                other => Err(NfsError::Protocol(format!(
                    "{what}: the server did not run the call: {other:?}"
                ))),
            },
            msg_body::REPLY(reply_body::MSG_DENIED(r)) => {
                Err(NfsError::Protocol(format!("{what}: call denied: {r:?}")))
            }
            msg_body::CALL(_) => Err(NfsError::Protocol(format!(
                "{what}: the server sent a call, not a reply"
            ))),
        }
    }

    /// Send every call, then collect every reply; results in the order of `calls`.
    fn round<A: Pack, R: Unpack>(&mut self, proc: NFS_PROGRAM, calls: &[A], what: &str) -> NfsResult<Vec<R>> {
        let mut order = HashMap::with_capacity(calls.len());
        for (i, args) in calls.iter().enumerate() {
            order.insert(self.send(proc, args, what)?, i);
        }
        let mut out: Vec<Option<R>> = (0..calls.len()).map(|_| None).collect();
        for _ in 0..calls.len() {
            let (xid, mut body) = self.recv(what)?;
            let i = order
                .remove(&xid)
                .ok_or_else(|| NfsError::Protocol(format!("{what}: a reply to no call of ours (xid {xid:#x})")))?;
            let (result, _) =
                R::unpack(&mut body).map_err(|e| NfsError::Protocol(format!("{what}: bad result: {e}")))?;
            out[i] = Some(result);
        }
        Ok(out.into_iter().map(|r| r.expect("every call answered once")).collect())
    }

    /// READ `count` bytes at each offset; the data in the order asked (short at end of file).
    pub fn read_many(&mut self, fh: &nfs_fh3, offsets: &[u64], count: u32, path: &str) -> NfsResult<Vec<Vec<u8>>> {
        let calls: Vec<READ3args> = offsets
            .iter()
            .map(|&offset| READ3args {
                file: fh.clone(),
                offset,
                count,
            })
            .collect();
        let results: Vec<READ3res<'static>> =
            self.round(NFS_PROGRAM::NFSPROC3_READ, &calls, &format!("READ {path}"))?;
        results
            .into_iter()
            .map(|r| check_status("READ", path, r).map(|ok| ok.data.into_owned()))
            .collect()
    }

    /// WRITE each `(offset, data)` unstable; returns how many bytes the server took of each.
    pub fn write_many(&mut self, fh: &nfs_fh3, chunks: &[(u64, &[u8])], path: &str) -> NfsResult<Vec<u32>> {
        let calls: Vec<WRITE3args> = chunks
            .iter()
            .map(|&(offset, data)| WRITE3args {
                file: fh.clone(),
                offset,
                count: data.len() as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(data),
            })
            .collect();
        let results: Vec<WRITE3res> = self.round(NFS_PROGRAM::NFSPROC3_WRITE, &calls, &format!("WRITE {path}"))?;
        results
            .into_iter()
            .map(|r| check_status("WRITE", path, r).map(|ok| ok.count))
            .collect()
    }
}

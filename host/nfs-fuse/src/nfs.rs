//! NFSv3 procedures over [`RpcClient`], the MOUNT handshake (over `nfs3_client`'s MOUNT and
//! portmapper clients), and the mapping of NFS status codes to errno values.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{
    self as n3, COMMIT3args, COMMIT3res, FSINFO3args, FSINFO3resok, FSSTAT3args, FSSTAT3res, FSSTAT3resok,
    GETATTR3args, GETATTR3res, NFS_PROGRAM, Nfs3Option, Nfs3Result, READ3args, fattr3, nfs_fh3, nfsstat3, post_op_attr,
    stable_how, writeverf3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::rpc::{RpcClient, RpcError};

/// What a call came back with, when not a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NfsError {
    /// The server answered with an NFS error status.
    #[error("{0}")]
    Status(nfsstat3),
    /// No (usable) answer: see [`RpcError`].
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl NfsError {
    /// The errno a caller of the file system sees.
    pub fn errno(&self) -> i32 {
        match self {
            NfsError::Status(s) => status_errno(*s),
            NfsError::Rpc(_) => libc::EIO,
        }
    }
}

/// The errno for an NFS status (RFC 1813 takes most of them from Unix errno values).
pub fn status_errno(s: nfsstat3) -> i32 {
    use nfsstat3::*;
    match s {
        NFS3_OK => 0,
        NFS3ERR_PERM => libc::EPERM,
        NFS3ERR_NOENT => libc::ENOENT,
        NFS3ERR_IO => libc::EIO,
        NFS3ERR_NXIO => libc::ENXIO,
        NFS3ERR_ACCES => libc::EACCES,
        NFS3ERR_EXIST => libc::EEXIST,
        NFS3ERR_XDEV => libc::EXDEV,
        NFS3ERR_NODEV => libc::ENODEV,
        NFS3ERR_NOTDIR => libc::ENOTDIR,
        NFS3ERR_ISDIR => libc::EISDIR,
        NFS3ERR_INVAL => libc::EINVAL,
        NFS3ERR_FBIG => libc::EFBIG,
        NFS3ERR_NOSPC => libc::ENOSPC,
        NFS3ERR_ROFS => libc::EROFS,
        NFS3ERR_MLINK => libc::EMLINK,
        NFS3ERR_NAMETOOLONG => libc::ENAMETOOLONG,
        NFS3ERR_NOTEMPTY => libc::ENOTEMPTY,
        NFS3ERR_DQUOT => libc::EDQUOT,
        NFS3ERR_STALE | NFS3ERR_BADHANDLE => libc::ESTALE,
        NFS3ERR_REMOTE => libc::EREMOTE,
        NFS3ERR_NOT_SYNC => libc::EIO,
        NFS3ERR_BAD_COOKIE => libc::EIO,
        NFS3ERR_NOTSUPP => libc::EOPNOTSUPP,
        NFS3ERR_TOOSMALL => libc::EIO,
        NFS3ERR_SERVERFAULT => libc::EREMOTEIO,
        NFS3ERR_BADTYPE => libc::EINVAL,
        NFS3ERR_JUKEBOX => libc::EAGAIN,
    }
}

pub type NfsResult<T> = Result<T, NfsError>;

/// Where and how to reach the server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub mount_port: Option<u16>,
    pub export: String,
    pub timeout: Duration,
    pub connections: usize,
}

/// What READ brought: the reply record and where the data is in it (no copy).
pub struct ReadData {
    reply: crate::rpc::Reply,
    start: usize,
    len: usize,
    pub eof: bool,
    pub attr: Option<fattr3>,
}

impl ReadData {
    pub fn data(&self) -> &[u8] {
        &self.reply.body()[self.start..self.start + self.len]
    }
}

/// What a WRITE did.
pub struct Written {
    pub count: u32,
    pub committed: stable_how,
    pub verf: writeverf3,
}

/// An NFSv3 session with a mounted export.
pub struct Nfs {
    rpc: RpcClient,
    pub root: nfs_fh3,
    pub rsize: u32,
    pub wsize: u32,
    /// The largest file the server takes.
    pub maxfilesize: u64,
}

/// The credential every call carries: AUTH_UNIX root (the export must not squash root).
fn credential() -> opaque_auth<'static> {
    let mut host = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let name = if unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0 {
        let n = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        host[..n.min(64)].to_vec()
    } else {
        b"elara".to_vec()
    };
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(name),
        uid: 0,
        gid: 0,
        gids: vec![],
    })
}

/// `nfs3_client`'s byte-stream traits over a tokio TCP stream (for MOUNT and the portmapper).
struct Io(TcpStream);

impl nfs3_client::io::AsyncRead for Io {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Io {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        tokio::io::AsyncWriteExt::write(&mut self.0, buf).await
    }
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} has no address"))
}

impl Nfs {
    /// MOUNT the export (asking the portmapper for the MOUNT port if none is given), then
    /// FSINFO and GETATTR its root over the NFS program.
    pub async fn connect(ep: &Endpoint) -> anyhow::Result<(Nfs, fattr3)> {
        let cred = credential();
        let nfs_addr = resolve(&ep.host, ep.port).await?;
        let mount_port = match ep.mount_port {
            Some(p) => p,
            None => {
                let addr = SocketAddr::new(nfs_addr.ip(), nfs3_client::nfs3_types::portmap::PMAP_PORT);
                let io = TcpStream::connect(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to the portmapper at {addr}: {e}"))?;
                let mut pm = nfs3_client::PortmapperClient::new(Io(io));
                pm.getport(
                    nfs3_client::nfs3_types::mount::PROGRAM,
                    nfs3_client::nfs3_types::mount::VERSION,
                    nfs3_client::nfs3_types::portmap::IPPROTO_TCP,
                )
                .await
                .map_err(|e| anyhow::anyhow!("asking the portmapper at {addr} for the MOUNT v3 port: {e}"))?
            }
        };
        let mount_addr = SocketAddr::new(nfs_addr.ip(), mount_port);
        let io = TcpStream::connect(mount_addr)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to MOUNT at {mount_addr}: {e}"))?;
        let mut mnt = nfs3_client::MountClient::new_with_auth(Io(io), cred.clone(), opaque_auth::default());
        let ok = mnt
            .mnt(dirpath(Opaque::borrowed(ep.export.as_bytes())))
            .await
            .map_err(|e| match e {
                nfs3_client::MountError::Denied(stat) => {
                    anyhow::anyhow!(
                        "the server refused to MOUNT {:?}: {stat:?} (is it exported to this host?)",
                        ep.export
                    )
                }
                other => anyhow::anyhow!("MOUNT {:?} at {mount_addr}: {other}", ep.export),
            })?;
        let root = nfs_fh3 {
            data: Opaque::owned(ok.fhandle.0.into_owned()),
        };
        let rpc = RpcClient::new(nfs_addr, n3::PROGRAM, n3::VERSION, cred, ep.connections, ep.timeout);
        let mut nfs = Nfs {
            rpc,
            root: root.clone(),
            rsize: 1 << 20,
            wsize: 1 << 20,
            maxfilesize: u64::MAX,
        };
        let info: FSINFO3resok = nfs
            .op::<_, FSINFO3resok, nfs3_client::nfs3_types::nfs3::FSINFO3resfail>(
                NFS_PROGRAM::NFSPROC3_FSINFO,
                &FSINFO3args { fsroot: root.clone() },
            )
            .await
            .map_err(|e| anyhow::anyhow!("FSINFO of the export's root: {e}"))?;
        nfs.rsize = clamp_io(info.rtmax);
        nfs.wsize = clamp_io(info.wtmax);
        nfs.maxfilesize = info.maxfilesize;
        let attr = nfs
            .getattr(&root)
            .await
            .map_err(|e| anyhow::anyhow!("GETATTR of the export's root: {e}"))?;
        Ok((nfs, attr))
    }

    pub fn server(&self) -> &str {
        self.rpc.server()
    }

    /// One call; an NFS3ERR_JUKEBOX answer (the server is busy, e.g. in its grace period) is
    /// retried after a pause until the call's deadline.
    pub async fn call<A: Pack, R: Unpack>(&self, proc: NFS_PROGRAM, args: &A) -> NfsResult<R> {
        self.call_tail::<A, R>(proc, args, None).await
    }

    async fn call_tail<A: Pack, R: Unpack>(&self, proc: NFS_PROGRAM, args: &A, tail: Option<Bytes>) -> NfsResult<R> {
        let deadline = Instant::now() + self.rpc.timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let reply = self.rpc.call(proc as u32, args, tail.clone()).await?;
            // Every NFSv3 result starts with its status.
            let status = reply
                .body()
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if status == Some(nfsstat3::NFS3ERR_JUKEBOX as u32) && Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
            return reply.decode::<R>().map_err(|msg| {
                NfsError::Rpc(RpcError::Protocol {
                    server: self.rpc.server().to_string(),
                    msg: format!("{proc}: {msg}"),
                })
            });
        }
    }

    /// A call whose result is an `Nfs3Result`: errors become [`NfsError::Status`].
    pub async fn op<A: Pack, T: Unpack, E: Unpack>(&self, proc: NFS_PROGRAM, args: &A) -> NfsResult<T> {
        match self.call_tail::<A, Nfs3Result<T, E>>(proc, args, None).await? {
            Nfs3Result::Ok(v) => Ok(v),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    pub async fn getattr(&self, fh: &nfs_fh3) -> NfsResult<fattr3> {
        let res: GETATTR3res = self
            .call(NFS_PROGRAM::NFSPROC3_GETATTR, &GETATTR3args { object: fh.clone() })
            .await?;
        match res {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    pub async fn fsstat(&self) -> NfsResult<FSSTAT3resok> {
        let res: FSSTAT3res = self
            .call(
                NFS_PROGRAM::NFSPROC3_FSSTAT,
                &FSSTAT3args {
                    fsroot: self.root.clone(),
                },
            )
            .await?;
        match res {
            Nfs3Result::Ok(ok) => Ok(ok),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    /// READ up to `count` bytes at `offset`; the data stays in the reply buffer.
    pub async fn read(&self, fh: &nfs_fh3, offset: u64, count: u32) -> NfsResult<ReadData> {
        let args = READ3args {
            file: fh.clone(),
            offset,
            count,
        };
        let reply = self.rpc.call(NFS_PROGRAM::NFSPROC3_READ as u32, &args, None).await?;
        let proto = |msg: String| {
            NfsError::Rpc(RpcError::Protocol {
                server: self.rpc.server().to_string(),
                msg: format!("READ: {msg}"),
            })
        };
        // READ3res: status, post_op_attr, then (if OK) count, eof, opaque data.
        let body = reply.body();
        let mut input = body;
        let (status, _) = nfsstat3::unpack(&mut input).map_err(|e| proto(e.to_string()))?;
        let (attr, _) = post_op_attr::unpack(&mut input).map_err(|e| proto(e.to_string()))?;
        if status != nfsstat3::NFS3_OK {
            return Err(NfsError::Status(status));
        }
        let (_count, _) = u32::unpack(&mut input).map_err(|e| proto(e.to_string()))?;
        let (eof, _) = bool::unpack(&mut input).map_err(|e| proto(e.to_string()))?;
        let (len, _) = u32::unpack(&mut input).map_err(|e| proto(e.to_string()))?;
        let start = body.len() - input.len();
        if input.len() < len as usize {
            return Err(proto(format!("{len} bytes announced, {} sent", input.len())));
        }
        let attr = match attr {
            Nfs3Option::Some(a) => Some(a),
            Nfs3Option::None => None,
        };
        Ok(ReadData {
            reply,
            start,
            len: len as usize,
            eof,
            attr,
        })
    }

    /// WRITE `data` at `offset` (one call: at most `wsize` bytes).
    pub async fn write(&self, fh: &nfs_fh3, offset: u64, data: Bytes, stable: stable_how) -> NfsResult<Written> {
        // WRITE3args up to the data's length word; the data follows as the call's tail.
        struct Head<'a> {
            fh: &'a nfs_fh3,
            offset: u64,
            count: u32,
            stable: stable_how,
        }
        impl Pack for Head<'_> {
            fn packed_size(&self) -> usize {
                self.fh.packed_size() + 8 + 4 + 4 + 4
            }
            fn pack(&self, out: &mut impl std::io::Write) -> nfs3_client::nfs3_types::xdr_codec::Result<usize> {
                Ok(self.fh.pack(out)?
                    + self.offset.pack(out)?
                    + self.count.pack(out)?
                    + self.stable.pack(out)?
                    + self.count.pack(out)?)
            }
        }
        let head = Head {
            fh,
            offset,
            count: data.len() as u32,
            stable,
        };
        let res: n3::WRITE3res = self.call_tail(NFS_PROGRAM::NFSPROC3_WRITE, &head, Some(data)).await?;
        match res {
            Nfs3Result::Ok(ok) => Ok(Written {
                count: ok.count,
                committed: ok.committed,
                verf: ok.verf,
            }),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    /// COMMIT all unstable writes of the file; returns the server's write verifier.
    pub async fn commit(&self, fh: &nfs_fh3) -> NfsResult<(writeverf3, Option<fattr3>)> {
        let res: COMMIT3res = self
            .call(
                NFS_PROGRAM::NFSPROC3_COMMIT,
                &COMMIT3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 0,
                },
            )
            .await?;
        match res {
            Nfs3Result::Ok(ok) => Ok((ok.verf, post_op(ok.file_wcc.after))),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }
}

pub fn post_op(a: post_op_attr) -> Option<fattr3> {
    match a {
        Nfs3Option::Some(a) => Some(a),
        Nfs3Option::None => None,
    }
}

/// The I/O size: the server's maximum, at most 1 MiB (FUSE's largest request).
fn clamp_io(max: u32) -> u32 {
    if max == 0 { 1 << 20 } else { max.clamp(4096, 1 << 20) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_statuses_map_to_the_errno_a_program_expects() {
        use nfsstat3::*;
        for (s, e) in [
            (NFS3ERR_NOENT, libc::ENOENT),
            (NFS3ERR_EXIST, libc::EEXIST),
            (NFS3ERR_NOTEMPTY, libc::ENOTEMPTY),
            (NFS3ERR_ACCES, libc::EACCES),
            (NFS3ERR_PERM, libc::EPERM),
            (NFS3ERR_ROFS, libc::EROFS),
            (NFS3ERR_NOSPC, libc::ENOSPC),
            (NFS3ERR_DQUOT, libc::EDQUOT),
            (NFS3ERR_NAMETOOLONG, libc::ENAMETOOLONG),
            (NFS3ERR_STALE, libc::ESTALE),
            (NFS3ERR_BADHANDLE, libc::ESTALE),
            (NFS3ERR_NOTDIR, libc::ENOTDIR),
            (NFS3ERR_ISDIR, libc::EISDIR),
            (NFS3ERR_FBIG, libc::EFBIG),
            (NFS3ERR_XDEV, libc::EXDEV),
            (NFS3ERR_MLINK, libc::EMLINK),
            (NFS3ERR_NOTSUPP, libc::EOPNOTSUPP),
            (NFS3ERR_IO, libc::EIO),
        ] {
            assert_eq!(status_errno(s), e, "{s}");
        }
        let timeout = NfsError::Rpc(RpcError::Timeout {
            server: "s".into(),
            timeout: Duration::from_secs(1),
            last: String::new(),
        });
        assert_eq!(timeout.errno(), libc::EIO);
    }
}

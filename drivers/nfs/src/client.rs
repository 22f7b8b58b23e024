//! A blocking NFSv3 session over the `nfs3_client` crate, and the tree operations the driver
//! builds on (make a directory path, remove a tree, measure a tree, copy a tree, small files
//! written atomically).
//!
//! Transport: `std::net::TcpStream`, which on `wasm32-wasip2` is `wasi:sockets` TCP, so the host's
//! socket grant decides which server (and ports) a backend may reach. Driver exports are
//! synchronous and a component has one thread, so the socket is blocking and `nfs3_client`'s
//! futures complete on their first poll ([`block_on`]).
//!
//! Credentials: AUTH_UNIX as root (uid 0, gid 0). The driver creates directories owned by the
//! volume's owner, so the export must not squash root (`no_root_squash`, ganesha's
//! `Squash = No_Root_Squash`); a squashing export answers `NFS3ERR_ACCES`/`NFS3ERR_PERM`, which
//! [`NfsError`] explains.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    COMMIT3args, CREATE3args, FSINFO3args, FSSTAT3args, FSSTAT3resok, GETATTR3args, LOOKUP3args, MKDIR3args,
    Nfs3Result, READ3args, READDIRPLUS3args, READLINK3args, REMOVE3args, RENAME3args, RMDIR3args, SETATTR3args,
    SYMLINK3args, WRITE3args, cookieverf3, createhow3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfspath3,
    nfsstat3, sattr3, set_mtime, stable_how, symlinkdata3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{ConnectError, Nfs3Client, Nfs3ConnectionBuilder, RpcError};

use crate::pipe::Pipe;

/// Largest READ/WRITE this client asks for (the server's preferred size if smaller).
const MAX_IO: u32 = 1 << 20;
/// READs or WRITEs in flight at once while copying a file.
const WINDOW: u64 = 8;
/// A reply the server does not send within this long counts as the server being unavailable.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// The server answered an NFS status other than OK.
    #[error("{op} {path}: {status:?}{hint}")]
    Status {
        op: &'static str,
        path: String,
        status: nfsstat3,
        hint: &'static str,
    },
    /// The server could not be reached, or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The server answered something this client cannot use (RPC or XDR error, missing handle).
    #[error("{0}")]
    Protocol(String),
}

impl NfsError {
    fn status(op: &'static str, path: &str, status: nfsstat3) -> Self {
        let hint = match status {
            nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM => {
                " (the driver works as root: the export must not squash root, e.g. no_root_squash)"
            }
            nfsstat3::NFS3ERR_ROFS => " (the export is read-only)",
            nfsstat3::NFS3ERR_NOSPC | nfsstat3::NFS3ERR_DQUOT => " (the export is full)",
            _ => "",
        };
        NfsError::Status {
            op,
            path: path.to_string(),
            status,
            hint,
        }
    }

    /// The NFS status, if the server answered one.
    pub fn nfs_status(&self) -> Option<nfsstat3> {
        match self {
            NfsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the connection is unusable (a new one may succeed).
    pub fn is_transport(&self) -> bool {
        matches!(self, NfsError::Transport(_))
            || matches!(
                self.nfs_status(),
                Some(nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE)
            )
    }

    fn rpc(op: &'static str, path: &str, e: RpcError) -> Self {
        match e {
            RpcError::Io(io) => NfsError::Transport(format!("{op} {path}: {io}")),
            other => NfsError::Protocol(format!("{op} {path}: {other}")),
        }
    }
}

pub type NfsResult<T> = Result<T, NfsError>;

/// Turn an RPC result carrying an NFS result into ours.
fn check<T, E>(op: &'static str, path: &str, res: Result<Nfs3Result<T, E>, RpcError>) -> NfsResult<T> {
    check_status(op, path, res.map_err(|e| NfsError::rpc(op, path, e))?)
}

/// Turn an NFS result into ours.
pub(crate) fn check_status<T, E>(op: &'static str, path: &str, res: Nfs3Result<T, E>) -> NfsResult<T> {
    match res {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((status, _)) => Err(NfsError::status(op, path, status)),
    }
}

/// Drive a future that never waits: every I/O under it is a blocking socket call.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        // nfs3_client only awaits our transport, whose futures are always ready.
        Poll::Pending => unreachable!("an NFS call waited on something other than its blocking socket"),
    }
}

/// A blocking TCP stream as `nfs3_client`'s transport.
#[derive(Debug)]
pub struct Tcp(TcpStream);

impl nfs3_client::io::AsyncRead for Tcp {
    fn async_read(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        std::future::ready(self.0.read(buf))
    }
    // The trait's default loops forever on end of stream; `read_exact` reports it.
    fn async_read_exact(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(self.0.read_exact(buf))
    }
}

impl nfs3_client::io::AsyncWrite for Tcp {
    fn async_write(&mut self, buf: &[u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        std::future::ready(self.0.write(buf))
    }
    fn async_write_all(&mut self, buf: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(self.0.write_all(buf))
    }
}

struct Connector;

impl nfs3_client::net::Connector for Connector {
    type Connection = Tcp;

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = std::io::Result<Tcp>> + Send {
        std::future::ready(TcpStream::connect(addr).map(|s| {
            // Best effort: not every WASI host implements socket timeouts.
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            let _ = s.set_nodelay(true);
            Tcp(s)
        }))
    }

    fn connect_with_port(&self, _: SocketAddr, _: u16) -> impl Future<Output = std::io::Result<Tcp>> + Send {
        // A component may not bind: the session never asks for a privileged source port.
        std::future::ready(Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "binding a source port",
        )))
    }
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Host name or address, as configured.
    pub host: String,
    /// NFS port; `None`: ask the server's portmapper (port 111).
    pub port: Option<u16>,
    /// MOUNT port; `None`: ask the portmapper.
    pub mount_port: Option<u16>,
    /// The export's MOUNT path.
    pub export: String,
}

/// Attributes to give a new file or directory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub fh: nfs_fh3,
    pub attr: fattr3,
}

/// Totals of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Bytes the server allocated (`used`).
    pub used_bytes: u64,
    /// Sum of file sizes.
    pub size_bytes: u64,
    /// Files, directories and links under the root (the root not counted).
    pub entries: u64,
}

/// A mounted export: the NFS program's connection and the export's root handle.
pub struct Session {
    client: Nfs3Client<Tcp>,
    root: nfs_fh3,
    rsize: u32,
    wsize: u32,
    /// The NFS program's address and our credential, for the bulk-data [`Pipe`].
    nfs_addr: SocketAddr,
    credential: opaque_auth<'static>,
    pipe: Option<Pipe>,
    /// `host:port` for messages.
    pub server: String,
}

impl Session {
    /// Resolve the server, MOUNT the export and connect to the NFS program.
    pub fn connect(ep: &Endpoint) -> NfsResult<Session> {
        let addr = (ep.host.as_str(), ep.port.unwrap_or(2049))
            .to_socket_addrs()
            .map_err(|e| NfsError::Transport(format!("resolving {}: {e}", ep.host)))?
            .next()
            .ok_or_else(|| NfsError::Transport(format!("{} has no address", ep.host)))?;
        let server = match ep.port {
            Some(p) => format!("{}:{p}", ep.host),
            None => ep.host.clone(),
        };
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"elara"),
            uid: 0,
            gid: 0,
            gids: vec![],
        });
        let mut builder = Nfs3ConnectionBuilder::new(Connector, addr.ip().to_string(), &ep.export)
            .connect_from_privileged_port(false)
            .credential(credential.clone());
        if let Some(p) = ep.port {
            builder = builder.nfs3_port(p);
        }
        if let Some(p) = ep.mount_port {
            builder = builder.mount_port(p);
        }
        let conn = block_on(builder.mount()).map_err(|e| match e {
            ConnectError::Mount(nfs3_client::MountError::Denied(stat)) => NfsError::Protocol(format!(
                "the server refused to mount {:?}: {stat:?} (is it exported to this client?)",
                ep.export
            )),
            ConnectError::Mount(nfs3_client::MountError::Rpc(RpcError::Io(io))) | ConnectError::Io(io) => {
                let hint = if io.kind() == std::io::ErrorKind::PermissionDenied {
                    " (the host's sandbox refused a connection: grant the backend --allow-host HOST for the \
                     portmapper, MOUNT and NFS ports, or set server=HOST:PORT and mount_port and grant those two)"
                } else {
                    ""
                };
                NfsError::Transport(format!("connecting: {io}{hint}"))
            }
            other => NfsError::Transport(format!("mounting {:?}: {other}", ep.export)),
        })?;
        let root = conn.root_nfs_fh3();
        let nfs_addr = SocketAddr::new(addr.ip(), conn.nfs3_port);
        let mut client = conn.into_nfs3_client();
        let info = check(
            "FSINFO",
            "/",
            block_on(client.fsinfo(&FSINFO3args { fsroot: root.clone() })),
        )?;
        let rsize = info.rtpref.clamp(4096, MAX_IO).min(info.rtmax.max(4096));
        let wsize = info.wtpref.clamp(4096, MAX_IO).min(info.wtmax.max(4096));
        Ok(Session {
            client,
            root,
            rsize,
            wsize,
            nfs_addr,
            credential,
            pipe: None,
            server,
        })
    }

    /// The export's root handle.
    pub fn root(&self) -> nfs_fh3 {
        self.root.clone()
    }

    /// FSSTAT of the export.
    pub fn fsstat(&mut self) -> NfsResult<FSSTAT3resok> {
        check(
            "FSSTAT",
            "/",
            block_on(self.client.fsstat(&FSSTAT3args {
                fsroot: self.root.clone(),
            })),
        )
    }

    pub fn getattr(&mut self, fh: &nfs_fh3, path: &str) -> NfsResult<fattr3> {
        let res = block_on(self.client.getattr(&GETATTR3args { object: fh.clone() }));
        Ok(check("GETATTR", path, res)?.obj_attributes)
    }

    /// LOOKUP `name` in `dir`; `None` if it does not exist.
    pub fn lookup(&mut self, dir: &nfs_fh3, name: &str, path: &str) -> NfsResult<Option<(nfs_fh3, fattr3)>> {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(name.as_bytes()),
            },
        };
        match check("LOOKUP", path, block_on(self.client.lookup(&args))) {
            Ok(ok) => {
                let attr = match ok.obj_attributes {
                    nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(a) => a,
                    nfs3_client::nfs3_types::nfs3::Nfs3Option::None => self.getattr(&ok.object, path)?,
                };
                Ok(Some((ok.object, attr)))
            }
            Err(e) if e.nfs_status() == Some(nfsstat3::NFS3ERR_NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The handle of `path` (relative to the export root, `/`-separated); `None` if any part is
    /// missing.
    pub fn resolve(&mut self, path: &str) -> NfsResult<Option<(nfs_fh3, fattr3)>> {
        let mut fh = self.root.clone();
        let mut attr = self.getattr(&fh, "/")?;
        for name in components(path) {
            match self.lookup(&fh, name, path)? {
                Some((next, a)) => (fh, attr) = (next, a),
                None => return Ok(None),
            }
        }
        Ok(Some((fh, attr)))
    }

    /// MKDIR `name` in `dir` with `owner`; an existing directory is returned as it is.
    pub fn mkdir(&mut self, dir: &nfs_fh3, name: &str, owner: Owner, path: &str) -> NfsResult<nfs_fh3> {
        let args = MKDIR3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(name.as_bytes()),
            },
            attributes: owner.sattr(),
        };
        match check("MKDIR", path, block_on(self.client.mkdir(&args))) {
            Ok(ok) => match ok.obj {
                nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(fh) => {
                    // Servers may ignore uid/gid in MKDIR's attributes: set them explicitly.
                    self.setattr(&fh, owner.sattr(), path)?;
                    Ok(fh)
                }
                nfs3_client::nfs3_types::nfs3::Nfs3Option::None => self.expect_dir(dir, name, path),
            },
            Err(e) if e.nfs_status() == Some(nfsstat3::NFS3ERR_EXIST) => self.expect_dir(dir, name, path),
            Err(e) => Err(e),
        }
    }

    fn expect_dir(&mut self, dir: &nfs_fh3, name: &str, path: &str) -> NfsResult<nfs_fh3> {
        match self.lookup(dir, name, path)? {
            Some((fh, attr)) if attr.type_ == ftype3::NF3DIR => Ok(fh),
            Some((_, attr)) => Err(NfsError::Protocol(format!(
                "{path} exists and is a {}, not a directory",
                attr.type_
            ))),
            None => Err(NfsError::Protocol(format!("{path} vanished right after MKDIR"))),
        }
    }

    /// Make every directory of `path` (relative to the directory `from`) that is missing,
    /// root-owned 0755; returns the last one's handle.
    pub fn mkdir_all(&mut self, from: &nfs_fh3, path: &str) -> NfsResult<nfs_fh3> {
        let mut fh = from.clone();
        for name in components(path) {
            fh = match self.lookup(&fh, name, path)? {
                Some((next, attr)) if attr.type_ == ftype3::NF3DIR => next,
                Some(_) => return Err(NfsError::Protocol(format!("{path}: {name} is not a directory"))),
                None => self.mkdir(
                    &fh,
                    name,
                    Owner {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                    path,
                )?,
            };
        }
        Ok(fh)
    }

    pub fn setattr(&mut self, fh: &nfs_fh3, attr: sattr3, path: &str) -> NfsResult<()> {
        let args = SETATTR3args {
            object: fh.clone(),
            new_attributes: attr,
            guard: nfs3_client::nfs3_types::nfs3::Nfs3Option::None,
        };
        check("SETATTR", path, block_on(self.client.setattr(&args))).map(|_| ())
    }

    /// Every entry of `dir` (without `.` and `..`), with handles and attributes.
    pub fn list(&mut self, dir: &nfs_fh3, path: &str) -> NfsResult<Vec<Entry>> {
        let mut out = Vec::new();
        let (mut cookie, mut verf) = (0, cookieverf3::default());
        loop {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 64 * 1024,
                maxcount: 256 * 1024,
            };
            let ok = check("READDIRPLUS", path, block_on(self.client.readdirplus(&args)))?;
            verf = ok.cookieverf;
            let mut last = None;
            for e in ok.reply.entries.0 {
                last = Some(e.cookie);
                let name = e.name.0.to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                let child = format!("{path}/{}", String::from_utf8_lossy(&name));
                let (fh, attr) = match (e.name_handle, e.name_attributes) {
                    (
                        nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(fh),
                        nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(attr),
                    ) => (fh, attr),
                    // The server may leave out a handle or attributes: ask for them.
                    _ => {
                        let name = String::from_utf8_lossy(&name).into_owned();
                        match self.lookup(dir, &name, &child)? {
                            Some(found) => found,
                            None => continue, // removed meanwhile
                        }
                    }
                };
                out.push(Entry { name, fh, attr });
            }
            if ok.reply.eof {
                return Ok(out);
            }
            cookie = last.ok_or_else(|| NfsError::Protocol(format!("READDIRPLUS {path}: no entries and no end")))?;
        }
    }

    /// Remove `name` in `dir` and everything under it; a missing `name` is fine.
    pub fn remove_tree(&mut self, dir: &nfs_fh3, name: &str, path: &str) -> NfsResult<()> {
        let Some((fh, attr)) = self.lookup(dir, name, path)? else {
            return Ok(());
        };
        if attr.type_ == ftype3::NF3DIR {
            for e in self.list(&fh, path)? {
                let child = String::from_utf8_lossy(&e.name).into_owned();
                self.remove_tree(&fh, &child, &format!("{path}/{child}"))?;
            }
            let args = RMDIR3args {
                object: diropargs3 {
                    dir: dir.clone(),
                    name: filename3::from(name.as_bytes()),
                },
            };
            ignore_noent(check("RMDIR", path, block_on(self.client.rmdir(&args))).map(|_| ()))
        } else {
            self.remove(dir, name, path)
        }
    }

    /// REMOVE a file; a missing one is fine.
    pub fn remove(&mut self, dir: &nfs_fh3, name: &str, path: &str) -> NfsResult<()> {
        let args = REMOVE3args {
            object: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(name.as_bytes()),
            },
        };
        ignore_noent(check("REMOVE", path, block_on(self.client.remove(&args))).map(|_| ()))
    }

    /// Totals of the tree under `fh` (a directory).
    pub fn usage(&mut self, fh: &nfs_fh3, path: &str) -> NfsResult<Usage> {
        let mut total = Usage::default();
        for e in self.list(fh, path)? {
            total.entries += 1;
            total.used_bytes += e.attr.used;
            if e.attr.type_ == ftype3::NF3REG {
                total.size_bytes += e.attr.size;
            }
            if e.attr.type_ == ftype3::NF3DIR {
                let sub = self.usage(&e.fh, &format!("{path}/{}", String::from_utf8_lossy(&e.name)))?;
                total.used_bytes += sub.used_bytes;
                total.size_bytes += sub.size_bytes;
                total.entries += sub.entries;
            }
        }
        Ok(total)
    }

    /// Copy the tree under the directory `src` into a new directory `name` in `dst_dir`,
    /// keeping modes, owners and modification times. Regular files, directories and symbolic
    /// links are copied; hard links become separate files; device nodes, FIFOs and sockets are
    /// skipped (reported in the returned count). `progress` sees the bytes copied so far.
    pub fn copy_tree(
        &mut self,
        src: &nfs_fh3,
        dst_dir: &nfs_fh3,
        name: &str,
        path: &str,
        progress: &mut dyn FnMut(u64),
    ) -> NfsResult<CopyStats> {
        let attr = self.getattr(src, path)?;
        let dst = self.mkdir(dst_dir, name, Owner::of(&attr), path)?;
        let mut stats = CopyStats::default();
        self.copy_children(src, &dst, path, &mut stats, progress)?;
        self.setattr(&dst, keep_times(&attr), path)?;
        Ok(stats)
    }

    fn copy_children(
        &mut self,
        src: &nfs_fh3,
        dst: &nfs_fh3,
        path: &str,
        stats: &mut CopyStats,
        progress: &mut dyn FnMut(u64),
    ) -> NfsResult<()> {
        for e in self.list(src, path)? {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let child = format!("{path}/{name}");
            match e.attr.type_ {
                ftype3::NF3DIR => {
                    let sub = self.mkdir(dst, &name, Owner::of(&e.attr), &child)?;
                    self.copy_children(&e.fh, &sub, &child, stats, progress)?;
                    self.setattr(&sub, keep_times(&e.attr), &child)?;
                }
                ftype3::NF3REG => {
                    let fh = self.create(dst, &name, Owner::of(&e.attr), &child)?;
                    self.copy_file(&e.fh, &fh, e.attr.size, &child, &mut |n| {
                        stats.bytes += n;
                        progress(stats.bytes);
                    })?;
                    self.commit(&fh, &child)?;
                    self.setattr(&fh, keep_times(&e.attr), &child)?;
                }
                ftype3::NF3LNK => {
                    let target = self.readlink(&e.fh, &child)?;
                    self.symlink(dst, &name, &target, Owner::of(&e.attr), &child)?;
                }
                _ => {
                    stats.skipped += 1;
                    continue;
                }
            }
            stats.entries += 1;
        }
        Ok(())
    }

    /// Copy `size` bytes of `src` into `dst`, a window of [`WINDOW`] READs then WRITEs in flight
    /// at a time on the bulk-data pipe; `copied` sees each window's bytes.
    fn copy_file(
        &mut self,
        src: &nfs_fh3,
        dst: &nfs_fh3,
        size: u64,
        path: &str,
        copied: &mut dyn FnMut(u64),
    ) -> NfsResult<()> {
        // Taken out while in use: a pipe that failed mid-window is dropped, not reused.
        let mut pipe = match self.pipe.take() {
            Some(pipe) => pipe,
            None => Pipe::connect(self.nfs_addr, self.credential.clone())?,
        };
        let chunk = self.rsize.min(self.wsize);
        let mut offset = 0;
        while offset < size {
            let offsets: Vec<u64> = (0..WINDOW)
                .map(|i| offset + i * u64::from(chunk))
                .take_while(|o| *o < size)
                .collect();
            let data = pipe.read_many(src, &offsets, chunk, path)?;
            let writes: Vec<(u64, &[u8])> = offsets
                .iter()
                .zip(&data)
                .filter(|(_, d)| !d.is_empty())
                .map(|(&at, d)| (at, d.as_slice()))
                .collect();
            let written = pipe.write_many(dst, &writes, path)?;
            for (&(at, bytes), &n) in writes.iter().zip(&written) {
                // A server may take less than asked: the rest goes one call at a time.
                if (n as usize) < bytes.len() {
                    self.write(dst, at + u64::from(n), &bytes[n as usize..], path)?;
                }
            }
            copied(data.iter().map(|d| d.len() as u64).sum());
            // Go on after the first short read (the server may send less than asked); an empty
            // one is the end of the file (it shrank since it was listed).
            match offsets.iter().zip(&data).find(|(_, d)| d.len() < chunk as usize) {
                Some((_, d)) if d.is_empty() => break,
                Some((&at, d)) => offset = at + d.len() as u64,
                None => offset = offsets.last().map_or(size, |&at| at + u64::from(chunk)),
            }
        }
        self.pipe = Some(pipe);
        Ok(())
    }

    /// CREATE (or truncate) a regular file.
    pub fn create(&mut self, dir: &nfs_fh3, name: &str, owner: Owner, path: &str) -> NfsResult<nfs_fh3> {
        let mut attr = owner.sattr();
        attr.size = nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(0);
        let args = CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(name.as_bytes()),
            },
            how: createhow3::UNCHECKED(attr),
        };
        let ok = check("CREATE", path, block_on(self.client.create(&args)))?;
        let fh = match ok.obj {
            nfs3_client::nfs3_types::nfs3::Nfs3Option::Some(fh) => fh,
            nfs3_client::nfs3_types::nfs3::Nfs3Option::None => {
                self.lookup(dir, name, path)?
                    .ok_or_else(|| NfsError::Protocol(format!("{path} vanished after CREATE")))?
                    .0
            }
        };
        self.setattr(&fh, owner.sattr(), path)?;
        Ok(fh)
    }

    /// One READ at `offset` (up to the session's read size); empty at end of file.
    pub fn read(&mut self, fh: &nfs_fh3, offset: u64, path: &str) -> NfsResult<Vec<u8>> {
        let args = READ3args {
            file: fh.clone(),
            offset,
            count: self.rsize,
        };
        let ok = check("READ", path, block_on(self.client.read(&args)))?;
        Ok(ok.data.into_owned())
    }

    /// Read a whole (small) file.
    pub fn read_all(&mut self, fh: &nfs_fh3, path: &str) -> NfsResult<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let chunk = self.read(fh, out.len() as u64, path)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// WRITE all of `data` at `offset`, unstable (a [`Session::commit`] makes it durable).
    pub fn write(&mut self, fh: &nfs_fh3, mut offset: u64, mut data: &[u8], path: &str) -> NfsResult<()> {
        while !data.is_empty() {
            let n = data.len().min(self.wsize as usize);
            let args = WRITE3args {
                file: fh.clone(),
                offset,
                count: n as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(&data[..n]),
            };
            let ok = check("WRITE", path, block_on(self.client.write(&args)))?;
            let written = (ok.count as usize).min(n);
            if written == 0 {
                return Err(NfsError::Protocol(format!("WRITE {path}: the server wrote 0 bytes")));
            }
            data = &data[written..];
            offset += written as u64;
        }
        Ok(())
    }

    /// COMMIT everything written to the file to stable storage.
    pub fn commit(&mut self, fh: &nfs_fh3, path: &str) -> NfsResult<()> {
        let args = COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        };
        check("COMMIT", path, block_on(self.client.commit(&args))).map(|_| ())
    }

    pub fn readlink(&mut self, fh: &nfs_fh3, path: &str) -> NfsResult<Vec<u8>> {
        let ok = check(
            "READLINK",
            path,
            block_on(self.client.readlink(&READLINK3args { symlink: fh.clone() })),
        )?;
        Ok(ok.data.0.to_vec())
    }

    pub fn symlink(&mut self, dir: &nfs_fh3, name: &str, target: &[u8], owner: Owner, path: &str) -> NfsResult<()> {
        let mut attr = owner.sattr();
        attr.mode = nfs3_client::nfs3_types::nfs3::Nfs3Option::None; // links have no mode of their own
        let args = SYMLINK3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(name.as_bytes()),
            },
            symlink: symlinkdata3 {
                symlink_attributes: attr,
                symlink_data: nfspath3(Opaque::borrowed(target)),
            },
        };
        match check("SYMLINK", path, block_on(self.client.symlink(&args))) {
            Err(e) if e.nfs_status() == Some(nfsstat3::NFS3ERR_EXIST) => {
                // A retried copy: replace what the earlier attempt made.
                self.remove(dir, name, path)?;
                check("SYMLINK", path, block_on(self.client.symlink(&args))).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    pub fn rename(&mut self, dir: &nfs_fh3, from: &str, to: &str, path: &str) -> NfsResult<()> {
        let args = RENAME3args {
            from: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(from.as_bytes()),
            },
            to: diropargs3 {
                dir: dir.clone(),
                name: filename3::from(to.as_bytes()),
            },
        };
        check("RENAME", path, block_on(self.client.rename(&args))).map(|_| ())
    }

    /// Replace the file `name` in `dir` with `data`: written to a temporary name, committed, then
    /// renamed over the old one, so a reader sees the old or the new content, never a part.
    pub fn write_file_atomic(&mut self, dir: &nfs_fh3, name: &str, data: &[u8], path: &str) -> NfsResult<()> {
        let tmp = format!(".{name}.tmp");
        let fh = self.create(
            dir,
            &tmp,
            Owner {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
            path,
        )?;
        self.write(&fh, 0, data, path)?;
        self.commit(&fh, path)?;
        self.rename(dir, &tmp, name, path)
    }
}

/// What a tree copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CopyStats {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes, FIFOs and sockets, which are not copied.
    pub skipped: u64,
}

impl Owner {
    fn of(attr: &fattr3) -> Owner {
        Owner {
            mode: attr.mode & 0o7777,
            uid: attr.uid,
            gid: attr.gid,
        }
    }

    fn sattr(self) -> sattr3 {
        use nfs3_client::nfs3_types::nfs3::Nfs3Option::Some;
        sattr3 {
            mode: Some(self.mode),
            uid: Some(self.uid),
            gid: Some(self.gid),
            ..Default::default()
        }
    }
}

/// The SETATTR that gives a copy its source's modification time.
fn keep_times(attr: &fattr3) -> sattr3 {
    sattr3 {
        mtime: set_mtime::SET_TO_CLIENT_TIME(attr.mtime),
        ..Default::default()
    }
}

fn ignore_noent(r: NfsResult<()>) -> NfsResult<()> {
    match r {
        Err(e) if e.nfs_status() == Some(nfsstat3::NFS3ERR_NOENT) => Ok(()),
        other => other,
    }
}

/// The non-empty parts of a `/`-separated path.
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// Paces progress reports: [`Throttle::due`] says yes at most once every `every`.
pub struct Throttle {
    started: Instant,
    last: Instant,
    every: Duration,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        let now = Instant::now();
        Throttle {
            started: now,
            last: now,
            every,
        }
    }

    /// Whether it is time to report; returns the time since the start.
    pub fn due(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now.duration_since(self.last) < self.every {
            return None;
        }
        self.last = now;
        Some(now.duration_since(self.started))
    }
}

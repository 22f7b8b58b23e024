//! The FUSE file system: each kernel request becomes a task on the tokio runtime, which makes
//! the NFS calls and answers the kernel; fuser's one dispatch thread only hands requests over.
//!
//! Inodes: a node per NFS file handle the kernel holds (counted by lookups, dropped on FORGET).
//! Its number is the server's fileid (so `st_ino` and hard links look as they do on the server),
//! except the export's root (FUSE's inode 1) and a fileid already taken by another handle
//! (a reused inode number while the kernel still holds the old file), which get a private number.
//!
//! Caching, close-to-open: the kernel caches attributes and names for `attr_timeout`; `open`
//! always asks the server (GETATTR) and keeps the page cache only when the file's mtime and size
//! are what the cache was filled from; `close` (flush) writes back everything and COMMITs.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, CREATE3res, LINK3args, LINK3res, LOOKUP3args, LOOKUP3res, MKDIR3args, MKDIR3res, MKNOD3args,
    MKNOD3res, NFS_PROGRAM, Nfs3Option, Nfs3Result, READDIRPLUS3args, READDIRPLUS3res, READLINK3args, READLINK3res,
    REMOVE3args, REMOVE3res, RENAME3args, RENAME3res, RMDIR3args, RMDIR3res, SETATTR3args, SETATTR3res, SYMLINK3args,
    SYMLINK3res, cookieverf3, createhow3, devicedata3, diropargs3, fattr3, filename3, ftype3, mknoddata3, nfs_fh3,
    nfspath3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, specdata3, stable_how, symlinkdata3,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use crate::nfs::{Nfs, NfsError, post_op};
use crate::wb::{Batch, Ticket, Unstable, WriteBack};

const ROOT: u64 = 1;

tokio::task_local! {
    /// The mount's count of answered write batches when the FUSE request being served arrived:
    /// attributes got while serving it may predate writes answered after (see `WriteBack::floor`).
    static OP_GEN: u64;
}

/// See [`OP_GEN`]; 0 (unknown) outside a request, which counts as "writes were answered since".
fn op_gen() -> u64 {
    OP_GEN.try_with(|g| *g).unwrap_or(0)
}
/// Private inode numbers (see the module's doc) count up from here.
const SYNTHETIC: u64 = 1 << 62;

type Res<T> = Result<T, i32>;
/// A hidden name to remove: (directory handle, name).
type Hidden = (nfs_fh3, Vec<u8>);

/// One file, directory or link the kernel knows.
pub struct Node {
    id: u64,
    fh: nfs_fh3,
    kind: ftype3,
    state: Mutex<NodeState>,
    wb: WriteBack,
}

struct NodeState {
    attr: fattr3,
    /// When `attr` came from the server (`None`: stale, ask again), and [`OP_GEN`] then.
    fetched: Option<Instant>,
    attr_gen: u64,
    /// The (mtime, size) the kernel's page cache of this file was filled from.
    cached: Option<(nfstime3, u64)>,
    /// Open handles of this mount on the file.
    open: u32,
    /// The last name the file was found under (directory, name): lets `unlink` of a file that is
    /// still open rename it aside instead (as the kernel NFS client's "silly rename").
    name: Option<(u64, Vec<u8>)>,
    /// Renamed aside while open: remove this name (directory handle, name) at the last close.
    silly: Option<Hidden>,
}

struct Known {
    node: Arc<Node>,
    lookups: u64,
}

#[derive(Default)]
struct Nodes {
    by_id: HashMap<u64, Known>,
    by_fh: HashMap<Vec<u8>, u64>,
    next_synthetic: u64,
}

/// An open file.
struct OpenFile {
    node: Arc<Node>,
    flags: i32,
}

/// An open directory: the listing position and what was fetched but not yet handed out.
struct DirStream {
    verf: cookieverf3,
    /// The cookie after which `buffer` starts, and whether the server said the listing ends
    /// with it.
    buffer_after: u64,
    buffer: VecDeque<DirEnt>,
    eof: bool,
}

struct DirEnt {
    /// [`OP_GEN`] when it was fetched.
    since: u64,
    name: Vec<u8>,
    cookie: u64,
    fileid: u64,
    handle: Option<(nfs_fh3, fattr3)>,
}

pub struct Core {
    pub nfs: Nfs,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    next_handle: AtomicU64,
    silly_seq: AtomicU64,
    ttl: Duration,
    read_only: bool,
    /// Tells the kernel to drop what it cached of an inode (set once the session exists).
    notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Write batches answered so far (see [`OP_GEN`]); starts at 1 (0 means unknown).
    answered: AtomicU64,
}

/// The fuser file system: hands every request to a task on `rt`.
pub struct NfsFs {
    rt: tokio::runtime::Handle,
    core: Arc<Core>,
}

fn name_of(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

fn fname(n: &[u8]) -> filename3<'_> {
    filename3(Opaque::borrowed(n))
}

fn to_time(t: nfstime3) -> SystemTime {
    UNIX_EPOCH + Duration::new(u64::from(t.seconds), t.nseconds.min(999_999_999))
}

fn from_time(t: SystemTime) -> nfstime3 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => nfstime3 {
            seconds: d.as_secs().min(u64::from(u32::MAX)) as u32,
            nseconds: d.subsec_nanos(),
        },
        Err(_) => nfstime3 {
            seconds: 0,
            nseconds: 0,
        },
    }
}

fn kind_of(t: ftype3) -> FileType {
    match t {
        ftype3::NF3REG => FileType::RegularFile,
        ftype3::NF3DIR => FileType::Directory,
        ftype3::NF3BLK => FileType::BlockDevice,
        ftype3::NF3CHR => FileType::CharDevice,
        ftype3::NF3LNK => FileType::Symlink,
        ftype3::NF3SOCK => FileType::Socket,
        ftype3::NF3FIFO => FileType::NamedPipe,
    }
}

/// Log a failed call (transport problems loudly, NFS statuses quietly) and give its errno.
fn fail(op: &str, e: NfsError) -> i32 {
    match &e {
        NfsError::Rpc(r) => tracing::warn!("{op}: {r}"),
        NfsError::Status(s) => tracing::debug!("{op}: {s}"),
    }
    e.errno()
}

fn opt<T: nfs3_client::nfs3_types::xdr_codec::Pack + nfs3_client::nfs3_types::xdr_codec::Unpack>(
    o: Nfs3Option<T>,
) -> Option<T> {
    match o {
        Nfs3Option::Some(v) => Some(v),
        Nfs3Option::None => None,
    }
}

impl Core {
    pub fn new(nfs: Nfs, root_attr: fattr3, ttl: Duration, read_only: bool) -> Core {
        let root = Arc::new(Node {
            id: ROOT,
            fh: nfs.root.clone(),
            kind: ftype3::NF3DIR,
            state: Mutex::new(NodeState {
                attr: root_attr,
                fetched: Some(Instant::now()),
                attr_gen: 0,
                cached: None,
                open: 0,
                name: None,
                silly: None,
            }),
            wb: WriteBack::default(),
        });
        let mut nodes = Nodes {
            next_synthetic: SYNTHETIC,
            ..Default::default()
        };
        nodes.by_fh.insert(nfs.root.data.to_vec(), ROOT);
        nodes.by_id.insert(ROOT, Known { node: root, lookups: 1 });
        Core {
            nfs,
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            silly_seq: AtomicU64::new(0),
            ttl,
            read_only,
            notifier: std::sync::OnceLock::new(),
            answered: AtomicU64::new(1),
        }
    }

    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    fn node(&self, ino: INodeNo) -> Res<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap()
            .by_id
            .get(&ino.0)
            .map(|k| k.node.clone())
            .ok_or(libc::ESTALE)
    }

    /// The node of `fh`, counting one more kernel lookup of it (made if new).
    fn remember(&self, fh: nfs_fh3, attr: &fattr3, name: Option<(u64, &[u8])>) -> Arc<Node> {
        let mut nodes = self.nodes.lock().unwrap();
        let key = fh.data.to_vec();
        let node = if let Some(id) = nodes.by_fh.get(&key).copied() {
            let known = nodes.by_id.get_mut(&id).expect("by_fh and by_id agree");
            known.lookups += 1;
            known.node.clone()
        } else {
            let id = if attr.fileid > ROOT && attr.fileid < SYNTHETIC && !nodes.by_id.contains_key(&attr.fileid) {
                attr.fileid
            } else {
                nodes.next_synthetic += 1;
                nodes.next_synthetic
            };
            let node = Arc::new(Node {
                id,
                fh,
                kind: attr.type_,
                state: Mutex::new(NodeState {
                    attr: attr.clone(),
                    fetched: None,
                    attr_gen: 0,
                    cached: None,
                    open: 0,
                    name: None,
                    silly: None,
                }),
                wb: WriteBack::default(),
            });
            nodes.by_fh.insert(key, id);
            nodes.by_id.insert(
                id,
                Known {
                    node: node.clone(),
                    lookups: 1,
                },
            );
            node
        };
        drop(nodes);
        self.set_attr(&node, attr);
        if let Some((dir, n)) = name {
            node.state.lock().unwrap().name = Some((dir, n.to_vec()));
        }
        node
    }

    fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut nodes = self.nodes.lock().unwrap();
        let Some(known) = nodes.by_id.get_mut(&ino) else {
            return;
        };
        known.lookups = known.lookups.saturating_sub(n);
        if known.lookups == 0 {
            let node = nodes.by_id.remove(&ino).expect("present").node;
            let key = node.fh.data.to_vec();
            if nodes.by_fh.get(&key) == Some(&ino) {
                nodes.by_fh.remove(&key);
            }
        }
    }

    fn set_attr(&self, node: &Node, attr: &fattr3) {
        let mut st = node.state.lock().unwrap();
        st.attr = attr.clone();
        st.attr_gen = op_gen();
        st.fetched = Some(Instant::now());
    }

    /// The count of answered write batches (see [`OP_GEN`]).
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Attributes for the kernel: the server's, with the size raised to the end of writes that
    /// are still on their way to the server.
    fn attr_out(&self, node: &Node, attr: &fattr3) -> FileAttr {
        self.attr_out_since(node, attr, op_gen())
    }

    fn attr_out_since(&self, node: &Node, attr: &fattr3, since: u64) -> FileAttr {
        self.attr_plain(node.id, attr, attr.size.max(node.wb.floor(since)))
    }

    fn attr_plain(&self, id: u64, attr: &fattr3, size: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(id),
            size,
            blocks: attr.used.div_ceil(512),
            atime: to_time(attr.atime),
            mtime: to_time(attr.mtime),
            ctime: to_time(attr.ctime),
            crtime: UNIX_EPOCH,
            kind: kind_of(attr.type_),
            perm: (attr.mode & 0o7777) as u16,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            rdev: libc::makedev(attr.rdev.specdata1, attr.rdev.specdata2) as u32,
            blksize: self.nfs.wsize,
            flags: 0,
        }
    }

    async fn fetch_attr(&self, node: &Node) -> Res<fattr3> {
        let a = self.nfs.getattr(&node.fh).await.map_err(|e| fail("GETATTR", e))?;
        self.set_attr(node, &a);
        Ok(a)
    }

    async fn getattr(&self, ino: INodeNo) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let cached = {
            let st = node.state.lock().unwrap();
            st.fetched
                .filter(|t| t.elapsed() < self.ttl)
                .map(|_| (st.attr.clone(), st.attr_gen))
        };
        Ok(match cached {
            Some((a, since)) => self.attr_out_since(&node, &a, since),
            None => {
                let a = self.fetch_attr(&node).await?;
                self.attr_out(&node, &a)
            }
        })
    }

    async fn lookup(&self, parent: INodeNo, name: &[u8]) -> Res<(Arc<Node>, fattr3)> {
        let dir = self.node(parent)?;
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
        };
        let res: LOOKUP3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_LOOKUP, &args)
            .await
            .map_err(|e| fail("LOOKUP", e))?;
        let ok = match res {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((s, _)) => return Err(fail("LOOKUP", NfsError::Status(s))),
        };
        if let Some(a) = opt(ok.dir_attributes) {
            self.set_attr(&dir, &a);
        }
        let attr = match opt(ok.obj_attributes) {
            Some(a) => a,
            None => self.nfs.getattr(&ok.object).await.map_err(|e| fail("GETATTR", e))?,
        };
        let node = self.remember(ok.object, &attr, Some((parent.0, name)));
        Ok((node, attr))
    }

    fn check_writable(&self) -> Res<()> {
        if self.read_only { Err(libc::EROFS) } else { Ok(()) }
    }

    /// The attributes a new object gets: the caller's uid, and its gid unless the directory is
    /// set-group-ID (then the directory's group, and a new directory inherits the bit).
    fn new_attrs(&self, dir: &Node, mode: Option<u32>, uid: u32, gid: u32, is_dir: bool) -> sattr3 {
        let dattr = dir.state.lock().unwrap().attr.clone();
        let sgid = dattr.mode & libc::S_ISGID != 0;
        let gid = if sgid { dattr.gid } else { gid };
        let mode = mode.map(|m| {
            if sgid && is_dir {
                (m & 0o7777) | libc::S_ISGID
            } else {
                m & 0o7777
            }
        });
        sattr3 {
            mode: mode.map_or(Nfs3Option::None, Nfs3Option::Some),
            uid: Nfs3Option::Some(uid),
            gid: Nfs3Option::Some(gid),
            ..Default::default()
        }
    }

    /// After CREATE/MKDIR/SYMLINK/MKNOD: the new object's handle and attributes, with the owner
    /// and mode set again where the server did not apply them.
    async fn finish_new(
        &self,
        op: &str,
        dir: &Node,
        name: &[u8],
        fh: Option<nfs_fh3>,
        attr: Option<fattr3>,
        want: &sattr3,
    ) -> Res<(nfs_fh3, fattr3)> {
        let fh = match fh {
            Some(fh) => fh,
            None => {
                let args = LOOKUP3args {
                    what: diropargs3 {
                        dir: dir.fh.clone(),
                        name: fname(name),
                    },
                };
                match self
                    .nfs
                    .call::<_, LOOKUP3res>(NFS_PROGRAM::NFSPROC3_LOOKUP, &args)
                    .await
                {
                    Ok(Nfs3Result::Ok(ok)) => ok.object,
                    Ok(Nfs3Result::Err((s, _))) => return Err(fail(op, NfsError::Status(s))),
                    Err(e) => return Err(fail(op, e)),
                }
            }
        };
        let mut attr = match attr {
            Some(a) => a,
            None => self.nfs.getattr(&fh).await.map_err(|e| fail("GETATTR", e))?,
        };
        let mut fix = sattr3::default();
        if let Nfs3Option::Some(u) = want.uid
            && attr.uid != u
        {
            fix.uid = Nfs3Option::Some(u);
        }
        if let Nfs3Option::Some(g) = want.gid
            && attr.gid != g
        {
            fix.gid = Nfs3Option::Some(g);
        }
        if let Nfs3Option::Some(m) = want.mode
            && attr.mode & 0o7777 != m
        {
            fix.mode = Nfs3Option::Some(m);
        }
        if fix.uid.is_some() || fix.gid.is_some() || fix.mode.is_some() {
            attr = self.setattr_raw(&fh, fix).await.map_err(|e| fail("SETATTR", e))?;
        }
        Ok((fh, attr))
    }

    async fn setattr_raw(&self, fh: &nfs_fh3, sattr: sattr3) -> Result<fattr3, NfsError> {
        let args = SETATTR3args {
            object: fh.clone(),
            new_attributes: sattr,
            guard: Nfs3Option::None,
        };
        let res: SETATTR3res = self.nfs.call(NFS_PROGRAM::NFSPROC3_SETATTR, &args).await?;
        match res {
            Nfs3Result::Ok(ok) => match post_op(ok.obj_wcc.after) {
                Some(a) => Ok(a),
                None => self.nfs.getattr(fh).await,
            },
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Res<FileAttr> {
        self.check_writable()?;
        let node = self.node(ino)?;
        if size.is_some() {
            // Queued writes land first: a truncation must cut them, not be overtaken by them;
            // and nothing stays held that a resend could write back past the new end.
            self.settle(&node).await;
            if let Err(e) = self.commit(&node, false).await {
                tracing::debug!("COMMIT before truncating: errno {e}");
            }
        }
        let time_a = |t: Option<TimeOrNow>| match t {
            None => set_atime::DONT_CHANGE,
            Some(TimeOrNow::Now) => set_atime::SET_TO_SERVER_TIME,
            Some(TimeOrNow::SpecificTime(t)) => set_atime::SET_TO_CLIENT_TIME(from_time(t)),
        };
        let time_m = |t: Option<TimeOrNow>| match t {
            None => set_mtime::DONT_CHANGE,
            Some(TimeOrNow::Now) => set_mtime::SET_TO_SERVER_TIME,
            Some(TimeOrNow::SpecificTime(t)) => set_mtime::SET_TO_CLIENT_TIME(from_time(t)),
        };
        let sattr = sattr3 {
            mode: mode.map_or(Nfs3Option::None, |m| Nfs3Option::Some(m & 0o7777)),
            uid: uid.map_or(Nfs3Option::None, Nfs3Option::Some),
            gid: gid.map_or(Nfs3Option::None, Nfs3Option::Some),
            size: size.map_or(Nfs3Option::None, Nfs3Option::Some),
            atime: time_a(atime),
            mtime: time_m(mtime),
        };
        let attr = self
            .setattr_raw(&node.fh, sattr)
            .await
            .map_err(|e| fail("SETATTR", e))?;
        {
            if size.is_some() {
                node.wb.truncated();
            }
            self.set_attr(&node, &attr);
            let mut st = node.state.lock().unwrap();
            if size.is_some() && st.cached.is_some() {
                // The kernel cut its page cache to the new size itself: it still matches.
                st.cached = Some((attr.mtime, attr.size));
            }
        }
        Ok(self.attr_out(&node, &attr))
    }

    async fn readlink(&self, ino: INodeNo) -> Res<Vec<u8>> {
        let node = self.node(ino)?;
        let res: READLINK3res = self
            .nfs
            .call(
                NFS_PROGRAM::NFSPROC3_READLINK,
                &READLINK3args {
                    symlink: node.fh.clone(),
                },
            )
            .await
            .map_err(|e| fail("READLINK", e))?;
        match res {
            Nfs3Result::Ok(ok) => Ok(ok.data.0.into_owned()),
            Nfs3Result::Err((s, _)) => Err(fail("READLINK", NfsError::Status(s))),
        }
    }

    async fn create_file(&self, parent: INodeNo, name: &[u8], mode: u32, uid: u32, gid: u32) -> Res<CreateOutcome> {
        self.check_writable()?;
        let dir = self.node(parent)?;
        let want = self.new_attrs(&dir, Some(mode), uid, gid, false);
        let args = CREATE3args {
            where_: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
            how: createhow3::GUARDED(want.clone()),
        };
        let res: CREATE3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_CREATE, &args)
            .await
            .map_err(|e| fail("CREATE", e))?;
        match res {
            Nfs3Result::Ok(ok) => {
                let (fh, attr) = self
                    .finish_new("CREATE", &dir, name, opt(ok.obj), opt(ok.obj_attributes), &want)
                    .await?;
                let node = self.remember(fh, &attr, Some((parent.0, name)));
                Ok(CreateOutcome::Created(node, attr))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => Ok(CreateOutcome::Exists),
            Nfs3Result::Err((s, _)) => Err(fail("CREATE", NfsError::Status(s))),
        }
    }

    async fn create(
        &self,
        parent: INodeNo,
        name: &[u8],
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Res<(Arc<Node>, fattr3, u64)> {
        let (node, attr) = match self.create_file(parent, name, mode, uid, gid).await? {
            CreateOutcome::Created(node, attr) => {
                node.state.lock().unwrap().cached = Some((attr.mtime, attr.size));
                (node, attr)
            }
            CreateOutcome::Exists if flags & libc::O_EXCL != 0 => return Err(libc::EEXIST),
            CreateOutcome::Exists => {
                // Made by someone else since the kernel looked: open that one.
                let (node, mut attr) = self.lookup(parent, name).await?;
                if node.kind == ftype3::NF3DIR {
                    self.forget(node.id, 1);
                    return Err(libc::EISDIR);
                }
                if flags & libc::O_TRUNC != 0 && attr.size != 0 {
                    let sattr = sattr3 {
                        size: Nfs3Option::Some(0),
                        ..Default::default()
                    };
                    attr = self
                        .setattr_raw(&node.fh, sattr)
                        .await
                        .map_err(|e| fail("SETATTR", e))?;
                    self.set_attr(&node, &attr);
                }
                node.state.lock().unwrap().cached = None;
                (node, attr)
            }
        };
        let fh = self.open_handle(&node, flags);
        Ok((node, attr, fh))
    }

    fn open_handle(&self, node: &Arc<Node>, flags: i32) -> u64 {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        node.state.lock().unwrap().open += 1;
        self.files.lock().unwrap().insert(
            id,
            Arc::new(OpenFile {
                node: node.clone(),
                flags,
            }),
        );
        id
    }

    async fn mknod(
        &self,
        parent: INodeNo,
        name: &[u8],
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Res<(Arc<Node>, fattr3)> {
        self.check_writable()?;
        let fmt = mode & libc::S_IFMT;
        if fmt == libc::S_IFREG || fmt == 0 {
            return match self.create_file(parent, name, mode, uid, gid).await? {
                CreateOutcome::Created(node, attr) => Ok((node, attr)),
                CreateOutcome::Exists => Err(libc::EEXIST),
            };
        }
        let dir = self.node(parent)?;
        let want = self.new_attrs(&dir, Some(mode), uid, gid, false);
        let spec = specdata3 {
            specdata1: libc::major(rdev.into()),
            specdata2: libc::minor(rdev.into()),
        };
        let what = match fmt {
            libc::S_IFIFO => mknoddata3::NF3FIFO(want.clone()),
            libc::S_IFSOCK => mknoddata3::NF3SOCK(want.clone()),
            libc::S_IFCHR => mknoddata3::NF3CHR(devicedata3 {
                dev_attributes: want.clone(),
                spec,
            }),
            libc::S_IFBLK => mknoddata3::NF3BLK(devicedata3 {
                dev_attributes: want.clone(),
                spec,
            }),
            _ => return Err(libc::EINVAL),
        };
        let args = MKNOD3args {
            where_: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
            what,
        };
        let res: MKNOD3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_MKNOD, &args)
            .await
            .map_err(|e| fail("MKNOD", e))?;
        match res {
            Nfs3Result::Ok(ok) => {
                let (fh, attr) = self
                    .finish_new("MKNOD", &dir, name, opt(ok.obj), opt(ok.obj_attributes), &want)
                    .await?;
                Ok((self.remember(fh, &attr, Some((parent.0, name))), attr))
            }
            Nfs3Result::Err((s, _)) => Err(fail("MKNOD", NfsError::Status(s))),
        }
    }

    async fn mkdir(&self, parent: INodeNo, name: &[u8], mode: u32, uid: u32, gid: u32) -> Res<(Arc<Node>, fattr3)> {
        self.check_writable()?;
        let dir = self.node(parent)?;
        let want = self.new_attrs(&dir, Some(mode), uid, gid, true);
        let args = MKDIR3args {
            where_: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
            attributes: want.clone(),
        };
        let res: MKDIR3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_MKDIR, &args)
            .await
            .map_err(|e| fail("MKDIR", e))?;
        match res {
            Nfs3Result::Ok(ok) => {
                let (fh, attr) = self
                    .finish_new("MKDIR", &dir, name, opt(ok.obj), opt(ok.obj_attributes), &want)
                    .await?;
                Ok((self.remember(fh, &attr, Some((parent.0, name))), attr))
            }
            Nfs3Result::Err((s, _)) => Err(fail("MKDIR", NfsError::Status(s))),
        }
    }

    async fn symlink(
        &self,
        parent: INodeNo,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Res<(Arc<Node>, fattr3)> {
        self.check_writable()?;
        let dir = self.node(parent)?;
        let want = self.new_attrs(&dir, None, uid, gid, false);
        let args = SYMLINK3args {
            where_: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
            symlink: symlinkdata3 {
                symlink_attributes: want.clone(),
                symlink_data: nfspath3(Opaque::borrowed(target)),
            },
        };
        let res: SYMLINK3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_SYMLINK, &args)
            .await
            .map_err(|e| fail("SYMLINK", e))?;
        match res {
            Nfs3Result::Ok(ok) => {
                let (fh, attr) = self
                    .finish_new("SYMLINK", &dir, name, opt(ok.obj), opt(ok.obj_attributes), &want)
                    .await?;
                Ok((self.remember(fh, &attr, Some((parent.0, name))), attr))
            }
            Nfs3Result::Err((s, _)) => Err(fail("SYMLINK", NfsError::Status(s))),
        }
    }

    /// The node open in this mount under `dir`/`name`, if any.
    fn open_under(&self, dir: u64, name: &[u8]) -> Option<Arc<Node>> {
        let files = self.files.lock().unwrap();
        files
            .values()
            .find(|f| {
                let st = f.node.state.lock().unwrap();
                st.silly.is_none() && st.name.as_ref().is_some_and(|(d, n)| *d == dir && n == name)
            })
            .map(|f| f.node.clone())
    }

    /// Rename the open file `node` (`dir`/`name`) aside to a hidden name, removed at its last
    /// close, so it stays readable and writable through the handles that have it open.
    async fn silly_rename(&self, dir: &Node, name: &[u8], node: &Node) -> Res<()> {
        let n = self.silly_seq.fetch_add(1, Ordering::Relaxed);
        let hidden = format!(".elara-nfs-{:x}-{:x}-{n}", node.id, std::process::id()).into_bytes();
        self.rename_raw(&dir.fh, name, &dir.fh, &hidden)
            .await
            .map_err(|e| fail("RENAME", e))?;
        let mut st = node.state.lock().unwrap();
        st.silly = Some((dir.fh.clone(), hidden.clone()));
        st.name = Some((dir.id, hidden));
        Ok(())
    }

    async fn unlink(&self, parent: INodeNo, name: &[u8]) -> Res<()> {
        self.check_writable()?;
        let dir = self.node(parent)?;
        if let Some(node) = self.open_under(parent.0, name) {
            return self.silly_rename(&dir, name, &node).await;
        }
        let args = REMOVE3args {
            object: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
        };
        let res: REMOVE3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_REMOVE, &args)
            .await
            .map_err(|e| fail("REMOVE", e))?;
        match res {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(fail("REMOVE", NfsError::Status(s))),
        }
    }

    async fn rmdir(&self, parent: INodeNo, name: &[u8]) -> Res<()> {
        self.check_writable()?;
        let dir = self.node(parent)?;
        let args = RMDIR3args {
            object: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(name),
            },
        };
        let res: RMDIR3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_RMDIR, &args)
            .await
            .map_err(|e| fail("RMDIR", e))?;
        match res {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(fail("RMDIR", NfsError::Status(s))),
        }
    }

    async fn rename_raw(&self, from: &nfs_fh3, name: &[u8], to: &nfs_fh3, newname: &[u8]) -> Result<(), NfsError> {
        let args = RENAME3args {
            from: diropargs3 {
                dir: from.clone(),
                name: fname(name),
            },
            to: diropargs3 {
                dir: to.clone(),
                name: fname(newname),
            },
        };
        let res: RENAME3res = self.nfs.call(NFS_PROGRAM::NFSPROC3_RENAME, &args).await?;
        match res {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(NfsError::Status(s)),
        }
    }

    async fn rename(
        &self,
        parent: INodeNo,
        name: &[u8],
        newparent: INodeNo,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Res<()> {
        self.check_writable()?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(libc::EINVAL);
        }
        let from = self.node(parent)?;
        let to = self.node(newparent)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            // NFSv3 has no such RENAME: check first (not atomic against other clients).
            let args = LOOKUP3args {
                what: diropargs3 {
                    dir: to.fh.clone(),
                    name: fname(newname),
                },
            };
            match self
                .nfs
                .call::<_, LOOKUP3res>(NFS_PROGRAM::NFSPROC3_LOOKUP, &args)
                .await
            {
                Ok(Nfs3Result::Ok(_)) => return Err(libc::EEXIST),
                Ok(Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _))) => {}
                Ok(Nfs3Result::Err((s, _))) => return Err(fail("LOOKUP", NfsError::Status(s))),
                Err(e) => return Err(fail("LOOKUP", e)),
            }
        } else if let Some(target) = self.open_under(newparent.0, newname) {
            // The file replaced is open here: keep it reachable until it is closed.
            self.silly_rename(&to, newname, &target).await?;
        }
        self.rename_raw(&from.fh, name, &to.fh, newname)
            .await
            .map_err(|e| fail("RENAME", e))?;
        if let Some(moved) = self.open_under(parent.0, name) {
            moved.state.lock().unwrap().name = Some((newparent.0, newname.to_vec()));
        }
        Ok(())
    }

    async fn link(&self, ino: INodeNo, newparent: INodeNo, newname: &[u8]) -> Res<(Arc<Node>, fattr3)> {
        self.check_writable()?;
        let node = self.node(ino)?;
        let dir = self.node(newparent)?;
        let args = LINK3args {
            file: node.fh.clone(),
            link: diropargs3 {
                dir: dir.fh.clone(),
                name: fname(newname),
            },
        };
        let res: LINK3res = self
            .nfs
            .call(NFS_PROGRAM::NFSPROC3_LINK, &args)
            .await
            .map_err(|e| fail("LINK", e))?;
        match res {
            Nfs3Result::Ok(ok) => {
                let attr = match opt(ok.file_attributes) {
                    Some(a) => a,
                    None => self.nfs.getattr(&node.fh).await.map_err(|e| fail("GETATTR", e))?,
                };
                Ok((self.remember(node.fh.clone(), &attr, None), attr))
            }
            Nfs3Result::Err((s, _)) => Err(fail("LINK", NfsError::Status(s))),
        }
    }

    /// Open: revalidate with the server (close-to-open) and keep the page cache only if the file
    /// is unchanged since it was filled.
    async fn open(&self, ino: INodeNo, flags: i32) -> Res<(u64, FopenFlags)> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.check_writable()?;
        }
        let node = self.node(ino)?;
        let attr = self.fetch_attr(&node).await?;
        let keep = {
            let mut st = node.state.lock().unwrap();
            if node.wb.busy() {
                // Our own writes are on their way: the cache holds them, the server not yet.
                st.cached.is_some()
            } else {
                let now = (attr.mtime, attr.size);
                let keep = st.cached == Some(now);
                st.cached = Some(now);
                keep
            }
        };
        if !keep {
            // The file changed (or was never opened here): the size and times the kernel cached
            // are stale too. Drop them; its next GETATTR is answered from what we just fetched.
            if let Some(n) = self.notifier.get()
                && let Err(e) = n.inval_inode(ino, -1, 0)
            {
                tracing::debug!("invalidating the attributes of inode {}: {e}", ino.0);
            }
        }
        let fh = self.open_handle(&node, flags);
        let mut fopen = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // Nothing to write back when it is closed: no FLUSH round trip.
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        Ok((fh, fopen))
    }

    fn file(&self, fh: FileHandle) -> Res<Arc<OpenFile>> {
        self.files.lock().unwrap().get(&fh.0).cloned().ok_or(libc::EBADF)
    }

    async fn read(&self, ino: INodeNo, offset: u64, size: u32) -> Res<ReadOut> {
        let node = self.node(ino)?;
        // Data still on its way to the server would be read stale: let it land first.
        self.settle(&node).await;
        let chunk = self.nfs.rsize;
        if size <= chunk {
            let first = self
                .nfs
                .read(&node.fh, offset, size)
                .await
                .map_err(|e| fail("READ", e))?;
            if let Some(a) = &first.attr {
                self.set_attr(&node, a);
            }
            if first.data().len() == size as usize || first.eof || first.data().is_empty() {
                return Ok(ReadOut::One(first));
            }
            // A short READ before the end: read on, FUSE wants the whole range.
            let mut out = first.data().to_vec();
            self.read_rest(&node, offset, size, &mut out).await?;
            return Ok(ReadOut::Many(out));
        }
        let parts = (size.div_ceil(chunk)) as usize;
        let reads = (0..parts).map(|i| {
            let at = offset + i as u64 * u64::from(chunk);
            let n = chunk.min(size - i as u32 * chunk);
            self.nfs.read(&node.fh, at, n)
        });
        let results = futures::future::join_all(reads).await;
        let mut out = Vec::with_capacity(size as usize);
        for (i, r) in results.into_iter().enumerate() {
            let r = r.map_err(|e| fail("READ", e))?;
            let want = chunk.min(size - i as u32 * chunk) as usize;
            out.extend_from_slice(r.data());
            if r.data().len() < want {
                if !r.eof && !r.data().is_empty() {
                    self.read_rest(&node, offset, size, &mut out).await?;
                }
                break;
            }
        }
        Ok(ReadOut::Many(out))
    }

    /// Read sequentially after `out` until `size` bytes or the end of the file.
    async fn read_rest(&self, node: &Node, offset: u64, size: u32, out: &mut Vec<u8>) -> Res<()> {
        while out.len() < size as usize {
            let want = (size as usize - out.len()).min(self.nfs.rsize as usize) as u32;
            let r = self
                .nfs
                .read(&node.fh, offset + out.len() as u64, want)
                .await
                .map_err(|e| fail("READ", e))?;
            out.extend_from_slice(r.data());
            if r.eof || r.data().is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Send one queued write (all of it, in as many WRITEs as the server needs).
    async fn send_write(
        &self,
        node: &Node,
        offset: u64,
        data: Bytes,
        stable: stable_how,
    ) -> Result<Vec<Unstable>, i32> {
        let mut held = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(self.nfs.wsize as usize);
            let part = data.slice(done..done + n);
            let w = self
                .nfs
                .write(&node.fh, offset + done as u64, part.clone(), stable)
                .await
                .map_err(|e| fail("WRITE", e))?;
            let took = (w.count as usize).min(n);
            if took == 0 {
                tracing::warn!("WRITE: the server took 0 bytes");
                return Err(libc::EIO);
            }
            tracing::trace!(offset, took, committed = ?w.committed, verf = ?w.verf.0, "WRITE answered");
            if w.committed == stable_how::UNSTABLE {
                held.push(Unstable {
                    offset: offset + done as u64,
                    data: part.slice(..took),
                    verf: w.verf,
                });
            }
            done += took;
        }
        Ok(held)
    }

    /// The answer to one FUSE WRITE (see `wb.rs`): as soon as it has room in the window.
    async fn ack(&self, node: &Node, ticket: Ticket, reply: ReplyWrite) {
        match node.wb.admit(&ticket).await {
            Ok(()) => reply.written(ticket.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// An O_SYNC/O_DSYNC write: FILE_SYNC, answered once the server has it.
    async fn write_sync(self: Arc<Self>, node: Arc<Node>, ticket: Ticket, data: Bytes, reply: ReplyWrite) {
        if let Err(e) = node.wb.admit(&ticket).await {
            reply.error(errno(e));
            return;
        }
        let batch = node.wb.single(ticket, data);
        node.wb.wait_turn(&batch).await;
        let res = self
            .send_write(&node, batch.offset, batch.data.clone(), stable_how::FILE_SYNC)
            .await;
        match &res {
            Ok(_) => reply.written(ticket.len() as u32),
            Err(e) => reply.error(errno(*e)),
        }
        // The caller heard how it went: nothing is left to report later.
        if let Some(next) = self
            .clone()
            .finish_batch(node.clone(), batch, Ok(res.unwrap_or_default()))
        {
            self.send_batch(node, next).await;
        }
    }

    /// Send a batch of gathered writes, then whatever gathered meanwhile.
    async fn send_batch(self: Arc<Self>, node: Arc<Node>, batch: Batch) {
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            node.wb.wait_turn(&batch).await;
            let res = self
                .send_write(&node, batch.offset, batch.data.clone(), stable_how::UNSTABLE)
                .await;
            next = self.clone().finish_batch(node.clone(), batch, res);
        }
    }

    fn finish_batch(self: Arc<Self>, node: Arc<Node>, batch: Batch, res: Result<Vec<Unstable>, i32>) -> Option<Batch> {
        // Our write changed mtime (and maybe size): the next GETATTR must ask the server.
        node.state.lock().unwrap().fetched = None;
        let (commit, next) = node.wb.complete(&batch, res, &self.answered);
        if commit {
            self.spawn_commit(node);
        }
        next
    }

    /// Send what is gathered and wait until every write of `node` is answered.
    async fn settle(&self, node: &Node) {
        let mut next = node.wb.kick();
        while let Some(batch) = next.take() {
            node.wb.wait_turn(&batch).await;
            let res = self
                .send_write(node, batch.offset, batch.data.clone(), stable_how::UNSTABLE)
                .await;
            node.state.lock().unwrap().fetched = None;
            next = node.wb.complete(&batch, res, &self.answered).1;
        }
        node.wb.drain().await;
    }

    fn spawn_commit(self: Arc<Self>, node: Arc<Node>) {
        tokio::spawn(async move {
            if let Err(e) = self.commit(&node, false).await {
                tracing::debug!("background COMMIT: errno {e}");
            }
        });
    }

    /// COMMIT what is held; resend (FILE_SYNC) whatever a server restart may have lost.
    async fn commit(&self, node: &Node, force: bool) -> Res<()> {
        let Some(batch) = node.wb.begin_commit(force).await else {
            return Ok(());
        };
        let res = async {
            let (verf, attr) = self.nfs.commit(&node.fh).await.map_err(|e| fail("COMMIT", e))?;
            tracing::trace!(held = batch.len(), verf = ?verf.0, "COMMIT answered");
            let lost: Vec<&Unstable> = batch.iter().filter(|u| u.verf != verf).collect();
            if !lost.is_empty() {
                tracing::warn!(
                    "the server's write verifier changed (it restarted): writing {} blocks of inode {} again",
                    lost.len(),
                    node.id
                );
                for u in lost {
                    self.send_write(node, u.offset, u.data.clone(), stable_how::FILE_SYNC)
                        .await?;
                }
            }
            Ok::<_, i32>(attr)
        }
        .await;
        match res {
            Ok(attr) => {
                node.wb.end_commit(Ok(()));
                if let Some(a) = attr {
                    self.set_attr(node, &a);
                }
                Ok(())
            }
            Err(e) => {
                // Held again for the next COMMIT; the error is reported once.
                node.wb.end_commit(Err((e, batch)));
                Err(e)
            }
        }
    }

    /// Everything written through this mount reaches stable storage: close and fsync.
    async fn flush(&self, node: &Node) -> Res<()> {
        if !node.wb.is_dirty() && !node.wb.busy() {
            return node.wb.take_error().map_or(Ok(()), Err);
        }
        self.settle(node).await;
        let res = self.commit(node, true).await;
        if let Some(e) = node.wb.take_error() {
            return Err(e);
        }
        res?;
        // The page cache now matches the server's file.
        let attr = self.fetch_attr(node).await?;
        let mut st = node.state.lock().unwrap();
        if st.cached.is_some() {
            st.cached = Some((attr.mtime, attr.size));
        }
        Ok(())
    }

    /// The kernel dropped handle `fh`: forget it now, on the dispatch thread (RELEASE is sent
    /// asynchronously, and an UNLINK right after the close must not find the file still open),
    /// and return it with the hidden name to remove if it was the last of a silly-renamed file.
    fn close_handle(&self, fh: FileHandle) -> Option<(Arc<OpenFile>, Option<Hidden>)> {
        let file = self.files.lock().unwrap().remove(&fh.0)?;
        let silly = {
            let mut st = file.node.state.lock().unwrap();
            st.open = st.open.saturating_sub(1);
            if st.open == 0 { st.silly.take() } else { None }
        };
        Some((file, silly))
    }

    /// Write back what the released handle left, then remove its hidden name if it had one.
    async fn release(&self, file: Arc<OpenFile>, silly: Option<Hidden>) -> Res<()> {
        let node = &file.node;
        let res = if file.flags & libc::O_ACCMODE != libc::O_RDONLY || node.wb.busy() {
            self.flush(node).await
        } else {
            Ok(())
        };
        if let Some((dir, name)) = silly {
            let args = REMOVE3args {
                object: diropargs3 {
                    dir,
                    name: fname(&name),
                },
            };
            if let Err(e) = self
                .nfs
                .call::<_, REMOVE3res>(NFS_PROGRAM::NFSPROC3_REMOVE, &args)
                .await
            {
                tracing::warn!("removing {}: {e}", String::from_utf8_lossy(&name));
            }
        }
        res
    }

    /// fallocate(2) mode 0: NFSv3 cannot reserve blocks, but the size grows as asked.
    async fn fallocate(&self, ino: INodeNo, offset: u64, length: u64, mode: i32) -> Res<()> {
        self.check_writable()?;
        if mode != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let node = self.node(ino)?;
        self.settle(&node).await;
        let attr = self.fetch_attr(&node).await?;
        let end = offset.checked_add(length).ok_or(libc::EFBIG)?;
        if end > attr.size {
            let sattr = sattr3 {
                size: Nfs3Option::Some(end),
                ..Default::default()
            };
            let attr = self
                .setattr_raw(&node.fh, sattr)
                .await
                .map_err(|e| fail("SETATTR", e))?;
            self.set_attr(&node, &attr);
            if let Some(n) = self.notifier.get() {
                let _ = n.inval_inode(ino, -1, 0);
            }
        }
        Ok(())
    }

    async fn statfs(&self) -> Res<(u64, u64, u64, u64, u64, u32, u32, u32)> {
        let s = self.nfs.fsstat().await.map_err(|e| fail("FSSTAT", e))?;
        let bsize: u64 = 4096;
        Ok((
            s.tbytes / bsize,
            s.fbytes / bsize,
            s.abytes / bsize,
            s.tfiles,
            s.ffiles,
            bsize as u32,
            255,
            bsize as u32,
        ))
    }

    /// Fill `stream`'s buffer from the server (READDIRPLUS: the kernel wants types, and handles
    /// and attributes for readdirplus), starting after `cookie`.
    async fn fetch_dir(&self, dir: &Node, stream: &mut DirStream, cookie: u64) -> Res<()> {
        if cookie == 0 {
            stream.verf = cookieverf3::default();
        }
        let mut retried = false;
        let ok = loop {
            let args = READDIRPLUS3args {
                dir: dir.fh.clone(),
                cookie,
                cookieverf: stream.verf,
                dircount: 32 << 10,
                maxcount: 128 << 10,
            };
            match self
                .nfs
                .call::<_, READDIRPLUS3res>(NFS_PROGRAM::NFSPROC3_READDIRPLUS, &args)
                .await
            {
                Ok(Nfs3Result::Ok(ok)) => break ok,
                Ok(Nfs3Result::Err((nfsstat3::NFS3ERR_BAD_COOKIE, _))) if !retried => {
                    // The directory changed under the listing: go on with a fresh verifier.
                    retried = true;
                    stream.verf = cookieverf3::default();
                }
                Ok(Nfs3Result::Err((s, _))) => {
                    return Err(fail("READDIRPLUS", NfsError::Status(s)));
                }
                Err(e) => return Err(fail("READDIRPLUS", e)),
            }
        };
        if let Some(a) = opt(ok.dir_attributes) {
            self.set_attr(dir, &a);
        }
        stream.verf = ok.cookieverf;
        stream.eof = ok.reply.eof;
        stream.buffer_after = cookie;
        stream.buffer.clear();
        for e in ok.reply.entries.0 {
            let name = e.name.0.into_owned();
            let mut handle = match (opt(e.name_handle), opt(e.name_attributes)) {
                (Some(fh), Some(a)) if !fh.data.is_empty() => Some((fh, a)),
                _ => None,
            };
            if handle.is_none() && name != b"." && name != b".." {
                // The server left this one out (allowed): ask for it.
                let args = LOOKUP3args {
                    what: diropargs3 {
                        dir: dir.fh.clone(),
                        name: fname(&name),
                    },
                };
                if let Ok(Nfs3Result::Ok(l)) = self
                    .nfs
                    .call::<_, LOOKUP3res>(NFS_PROGRAM::NFSPROC3_LOOKUP, &args)
                    .await
                {
                    let attr = match opt(l.obj_attributes) {
                        Some(a) => Some(a),
                        None => self.nfs.getattr(&l.object).await.ok(),
                    };
                    handle = attr.map(|a| (l.object, a));
                }
            }
            stream.buffer.push_back(DirEnt {
                since: op_gen(),
                name,
                cookie: e.cookie,
                fileid: e.fileid,
                handle,
            });
        }
        Ok(())
    }

    /// The next entries of the open directory `fh` after `offset`; `fill` takes them one by
    /// one and says when the reply is full (that entry stays for the next call).
    async fn readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut fill: impl FnMut(&Core, &DirEnt) -> bool,
    ) -> Res<()> {
        let dir = self.node(ino)?;
        let stream = self.dirs.lock().unwrap().get(&fh.0).cloned().ok_or(libc::EBADF)?;
        let mut stream = stream.lock().await;
        let mut offset = offset;
        loop {
            let have = stream.buffer_after == offset && (!stream.buffer.is_empty() || stream.eof);
            if !have {
                self.fetch_dir(&dir, &mut stream, offset).await?;
            }
            if stream.buffer.is_empty() {
                return Ok(());
            }
            while let Some(e) = stream.buffer.front() {
                if fill(self, e) {
                    return Ok(());
                }
                offset = e.cookie;
                stream.buffer_after = offset;
                stream.buffer.pop_front();
            }
            if stream.eof {
                return Ok(());
            }
        }
    }
}

enum CreateOutcome {
    Created(Arc<Node>, fattr3),
    Exists,
}

enum ReadOut {
    One(crate::nfs::ReadData),
    Many(Vec<u8>),
}

impl NfsFs {
    pub fn new(rt: tokio::runtime::Handle, core: Arc<Core>) -> NfsFs {
        NfsFs { rt, core }
    }

    fn spawn<F>(&self, f: impl FnOnce(Arc<Core>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let now = self.core.answered();
        self.rt.spawn(OP_GEN.scope(now, f(self.core.clone())));
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl fuser::Filesystem for NfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!("the kernel lacks FUSE capability {cap:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_of(name);
        self.spawn(|core| async move {
            match core.lookup(parent, &name).await {
                Ok((node, attr)) => reply.entry(&core.ttl, &core.attr_out(&node, &attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(|core| async move {
            match core.getattr(ino).await {
                Ok(a) => reply.attr(&core.ttl, &a),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.spawn(|core| async move {
            match core.setattr(ino, mode, uid, gid, size, atime, mtime).await {
                Ok(a) => reply.attr(&core.ttl, &a),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(|core| async move {
            match core.readlink(ino).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        self.spawn(|core| async move {
            match core.mknod(parent, &name, mode, rdev, uid, gid).await {
                Ok((node, attr)) => reply.entry(&core.ttl, &core.attr_out(&node, &attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        self.spawn(|core| async move {
            match core.mkdir(parent, &name, mode, uid, gid).await {
                Ok((node, attr)) => reply.entry(&core.ttl, &core.attr_out(&node, &attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(|core| async move {
            match core.unlink(parent, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_of(name);
        self.spawn(|core| async move {
            match core.rmdir(parent, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (name, target, uid, gid) = (
            name_of(link_name),
            target.as_os_str().as_bytes().to_vec(),
            req.uid(),
            req.gid(),
        );
        self.spawn(|core| async move {
            match core.symlink(parent, &name, &target, uid, gid).await {
                Ok((node, attr)) => reply.entry(&core.ttl, &core.attr_out(&node, &attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name_of(name), name_of(newname));
        self.spawn(|core| async move {
            match core.rename(parent, &name, newparent, &newname, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = name_of(newname);
        self.spawn(|core| async move {
            match core.link(ino, newparent, &newname).await {
                Ok((node, attr)) => reply.entry(&core.ttl, &core.attr_out(&node, &attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|core| async move {
            match core.open(ino, flags.0).await {
                Ok((fh, f)) => reply.opened(FileHandle(fh), f),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|core| async move {
            match core.read(ino, offset, size).await {
                Ok(ReadOut::One(r)) => reply.data(r.data()),
                Ok(ReadOut::Many(v)) => reply.data(&v),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if self.core.read_only {
            reply.error(Errno::EROFS);
            return;
        }
        let node = match self.core.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(e)),
        };
        let open_flags = self.core.file(fh).map(|f| f.flags).unwrap_or(flags.0);
        let sync = (open_flags | flags.0) & (libc::O_SYNC | libc::O_DSYNC) != 0;
        // Take the place in the write order here, on the dispatch thread, in the kernel's order.
        let (ticket, batches) = node.wb.queue(offset, data, self.core.nfs.wsize as usize, sync);
        for b in batches {
            self.rt.spawn(self.core.clone().send_batch(node.clone(), b));
        }
        let core = self.core.clone();
        if sync {
            let data = Bytes::copy_from_slice(data);
            self.rt.spawn(core.write_sync(node, ticket, data, reply));
        } else {
            match node.wb.try_admit(&ticket) {
                // The usual case, answered right here: no task, no thread hop.
                Some(Ok(())) => reply.written(ticket.len() as u32),
                Some(Err(e)) => reply.error(errno(e)),
                None => {
                    self.rt.spawn(async move { core.ack(&node, ticket, reply).await });
                }
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(|core| async move {
            let res = match core.file(fh) {
                Ok(f) => core.flush(&f.node).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some((file, silly)) = self.core.close_handle(fh) else {
            return reply.ok();
        };
        self.spawn(|core| async move {
            match core.release(file, silly).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|core| async move {
            let res = match core.node(ino) {
                Ok(n) => core.flush(&n).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.core.node(ino) {
            return reply.error(errno(e));
        }
        let id = self.core.next_handle.fetch_add(1, Ordering::Relaxed);
        let stream = DirStream {
            verf: cookieverf3::default(),
            buffer_after: u64::MAX,
            buffer: VecDeque::new(),
            eof: false,
        };
        self.core
            .dirs
            .lock()
            .unwrap()
            .insert(id, Arc::new(tokio::sync::Mutex::new(stream)));
        reply.opened(FileHandle(id), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(|core| async move {
            let res = core
                .readdir(ino, fh, offset, |_, e| {
                    let kind = e
                        .handle
                        .as_ref()
                        .map_or(FileType::RegularFile, |(_, a)| kind_of(a.type_));
                    let id = if e.name == b"." { ino.0 } else { e.fileid.max(2) };
                    reply.add(INodeNo(id), e.cookie, kind, OsStr::from_bytes(&e.name))
                })
                .await;
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.spawn(|core| async move {
            let res = core
                .readdir(ino, fh, offset, |core, e| {
                    let name = OsStr::from_bytes(&e.name);
                    let dot = e.name == b"." || e.name == b"..";
                    match &e.handle {
                        Some((fh, a)) if !dot => {
                            // The kernel counts a lookup for every entry it is given (but "." and
                            // ".."): one that does not fit is forgotten again.
                            let node = core.remember(fh.clone(), a, Some((ino.0, &e.name)));
                            let attr = core.attr_out_since(&node, a, e.since);
                            let full = reply.add(INodeNo(node.id), e.cookie, name, &core.ttl, &attr, Generation(0));
                            if full {
                                core.forget(node.id, 1);
                            }
                            full
                        }
                        Some((_, a)) => {
                            let id = if e.name == b"." { ino.0 } else { a.fileid.max(2) };
                            let attr = core.attr_plain(id, a, a.size);
                            reply.add(INodeNo(id), e.cookie, name, &Duration::ZERO, &attr, Generation(0))
                        }
                        None => {
                            // No handle even after LOOKUP (it vanished meanwhile): skip it.
                            let _ = e;
                            false
                        }
                    }
                })
                .await;
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|core| async move {
            match core.statfs().await {
                Ok((blocks, bfree, bavail, files, ffree, bsize, namelen, frsize)) => {
                    reply.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, uid, gid) = (name_of(name), req.uid(), req.gid());
        self.spawn(|core| async move {
            match core.create(parent, &name, mode, flags, uid, gid).await {
                Ok((node, attr, fh)) => reply.created(
                    &core.ttl,
                    &core.attr_out(&node, &attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn(|core| async move {
            match core.fallocate(ino, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    // No extended attributes over NFSv3: ENOSYS makes the kernel answer EOPNOTSUPP itself from
    // then on, without asking again.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    // The kernel's generic SEEK_DATA/SEEK_HOLE and copy_file_range fallbacks serve.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }
}

//! A FUSE filesystem for power-loss tests, in the spirit of LazyFS: every
//! file and directory lives in memory twice, as the process sees it and as a
//! disk would have it after a power cut. Writes, truncations, creates,
//! renames and unlinks change only the first copy; `fsync`/`fdatasync` of a
//! file makes its contents (and size) durable, `fsync` of a directory makes
//! its entries durable. `LazyFs::power_cut` then drops everything not yet
//! synced: files fall back to their last synced contents, directories to
//! their last synced entries, and whatever is no longer reachable is gone.
//!
//! It is strict where POSIX is: a file whose data was synced but whose
//! directory entry never was disappears at a cut, like on a real disk.
//!
//! `LazyFs::fail_file_syncs_after(n)` makes file syncs fail with EIO after
//! `n` more, without making anything durable: a disk whose writeback failed.
//!
//! `LazyFs::set_fsync_lies(true)` makes every fsync return success without
//! making anything durable: a disk (or a store) that acknowledges before
//! data is safe. A power-loss test runs once that way to show its checker
//! catches such losses.
//!
//! What it serves is what SQLite in WAL mode needs: regular files and
//! directories, read/write at offsets, truncate, rename, unlink, and shared
//! writable `mmap` of the `-shm` file (the kernel's page cache does that;
//! files are opened without direct I/O). Attributes and entries are given a
//! zero TTL, and files are opened without `keep_cache`, so after a cut the
//! kernel asks again instead of serving what it cached. POSIX locks are left
//! to the kernel (the lock capability is not negotiated), which is right for
//! one machine. The mount is served by a background thread of the process
//! that calls `mount`; the filesystem is gone when `LazyFs` is dropped.
//!
//! Limits: no symlinks, hard links, xattrs or special files. A write still in
//! flight from a process killed right before the cut may land just after it:
//! callers reap the process and wait a moment before cutting.

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL,
    TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Unit of dirty tracking: a sync copies only the pages written since the last one.
const PAGE: usize = 4096;
/// The kernel may cache nothing: after a cut it must ask again.
const TTL: Duration = Duration::ZERO;
/// What `statfs` reports: plenty of room (the data lives in memory).
const STATFS_BLOCKS: u64 = 1 << 24;
const ROOT: u64 = 1;

/// Counts of what the filesystem saw, for a test's evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    /// `fsync`/`fdatasync` of files, and of directories.
    pub file_syncs: u64,
    pub dir_syncs: u64,
    /// Syncs answered success without making anything durable (lying mode).
    pub lied_syncs: u64,
    /// File syncs answered EIO (`fail_file_syncs_after`); nothing was made durable.
    pub failed_syncs: u64,
    pub power_cuts: u64,
}

/// What one `power_cut` dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose contents or size differed from their synced state.
    pub files_reverted: u64,
    /// Bytes in pages written since the last sync, dropped.
    pub dirty_bytes_dropped: u64,
    /// Directories whose entries differed from their synced state.
    pub dirs_reverted: u64,
    /// Files and directories no longer reachable, removed.
    pub inodes_removed: u64,
}

enum Body {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// Pages of `data` changed since the last sync.
        dirty: BTreeSet<usize>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
}

impl Inode {
    fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = match &self.body {
            Body::File { data, .. } => data.len() as u64,
            Body::Dir { entries, .. } => entries.len() as u64,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind: self.kind(),
            perm: self.perm,
            nlink: if matches!(self.body, Body::Dir { .. }) { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    lie: bool,
    /// File syncs that still succeed before every one fails with EIO (None: no failures).
    syncs_before_eio: Option<u64>,
    stats: Stats,
}

impl State {
    fn new() -> Self {
        let root = Inode {
            body: Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() },
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        Self {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            lie: false,
            syncs_before_eio: None,
            stats: Stats::default(),
        }
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::Dir { entries, .. }) => Ok(entries),
            Some(Body::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<(u64, FileAttr), Errno> {
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let inode = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok((ino, inode.attr(ino)))
    }

    fn make(&mut self, parent: u64, name: &OsStr, body: Body, mode: u32) -> Result<(u64, FileAttr), Errno> {
        let ino = self.next_ino;
        let entries = self.dir(parent)?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next_ino += 1;
        let inode = Inode { body, perm: (mode & 0o7777) as u16, mtime: SystemTime::now() };
        let attr = inode.attr(ino);
        self.inodes.insert(ino, inode);
        Ok((ino, attr))
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut BTreeSet<usize>), Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::File { data, dirty, .. }) => Ok((data, dirty)),
            Some(Body::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn resize(&mut self, ino: u64, size: usize) -> Result<(), Errno> {
        let (data, dirty) = self.file(ino)?;
        let (low, high) = (size.min(data.len()), size.max(data.len()));
        dirty.extend(low / PAGE..high.div_ceil(PAGE));
        data.resize(size, 0);
        Ok(())
    }

    fn write(&mut self, ino: u64, offset: usize, bytes: &[u8]) -> Result<(), Errno> {
        let (data, dirty) = self.file(ino)?;
        let end = offset + bytes.len();
        let from = offset.min(data.len());
        if end > data.len() {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(bytes);
        dirty.extend(from / PAGE..end.div_ceil(PAGE));
        self.stats.writes += 1;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let lie = self.lie;
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        match &mut inode.body {
            Body::File { data, durable, dirty } => {
                self.stats.file_syncs += 1;
                match &mut self.syncs_before_eio {
                    Some(0) => {
                        self.stats.failed_syncs += 1;
                        return Err(Errno::EIO);
                    }
                    Some(n) => *n -= 1,
                    None => {}
                }
                if lie {
                    self.stats.lied_syncs += 1;
                    return Ok(());
                }
                durable.resize(data.len(), 0);
                for page in std::mem::take(dirty) {
                    let (start, end) = (page * PAGE, ((page + 1) * PAGE).min(data.len()));
                    if start < end {
                        durable[start..end].copy_from_slice(&data[start..end]);
                    }
                }
            }
            Body::Dir { entries, durable } => {
                self.stats.dir_syncs += 1;
                if lie {
                    self.stats.lied_syncs += 1;
                    return Ok(());
                }
                durable.clone_from(entries);
            }
        }
        Ok(())
    }

    fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for inode in self.inodes.values_mut() {
            match &mut inode.body {
                Body::File { data, durable, dirty } => {
                    if !dirty.is_empty() || data.len() != durable.len() {
                        report.files_reverted += 1;
                        report.dirty_bytes_dropped += (dirty.len() * PAGE) as u64;
                    }
                    data.clone_from(durable);
                    dirty.clear();
                }
                Body::Dir { entries, durable } => {
                    if entries != durable {
                        report.dirs_reverted += 1;
                    }
                    entries.clone_from(durable);
                }
            }
        }
        // Whatever the synced tree does not reach is gone.
        let mut reachable = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Inode { body: Body::Dir { entries, .. }, .. }) = self.inodes.get(&ino) {
                for child in entries.values() {
                    if reachable.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reachable.contains(ino));
        report.inodes_removed = (before - self.inodes.len()) as u64;
        self.stats.power_cuts += 1;
        report
    }
}

/// The filesystem as fuser serves it; shares its state with `LazyFs`.
struct Served(Arc<Mutex<State>>);

impl Served {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the mount: the state stays usable.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Filesystem for Served {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state().lookup(parent.0, name) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().inodes.get(&ino.0) {
            Some(inode) => reply.attr(&TTL, &inode.attr(ino.0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(size) = size
            && let Err(e) = state.resize(ino.0, size as usize)
        {
            return reply.error(e);
        }
        match state.inodes.get_mut(&ino.0) {
            Some(inode) => {
                if let Some(mode) = mode {
                    inode.perm = (mode & 0o7777) as u16;
                }
                inode.mtime = SystemTime::now();
                reply.attr(&TTL, &inode.attr(ino.0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let body = Body::File { data: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
        match self.state().make(parent.0, name, body, mode) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let body = Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() };
        match self.state().make(parent.0, name, body, mode) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.dir(parent.0).map(|d| d.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let ino = match state.lookup(parent.0, name) {
            Ok((ino, _)) => ino,
            Err(e) => return reply.error(e),
        };
        match state.dir(ino) {
            Ok(entries) if entries.is_empty() => {}
            Ok(_) => return reply.error(Errno::ENOTEMPTY),
            Err(e) => return reply.error(e),
        }
        let _ = state.dir(parent.0).map(|d| d.remove(name));
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let ino = match state.dir(parent.0).map(|d| d.remove(name)) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match state.dir(newparent.0) {
            Ok(entries) => {
                entries.insert(newname.to_owned(), ino);
                reply.ok();
            }
            Err(e) => {
                let _ = state.dir(parent.0).map(|d| d.insert(name.to_owned(), ino));
                reply.error(e);
            }
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().file(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
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
        match self.state().file(ino.0) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, offset as usize, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.state();
        let Some(Inode { body: Body::Dir { entries, .. }, .. }) = state.inodes.get(&ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots =
            [(ino.0, FileType::Directory, OsString::from(".")), (ROOT, FileType::Directory, "..".into())];
        let listed = entries
            .iter()
            .filter_map(|(name, child)| state.inodes.get(child).map(|i| (*child, i.kind(), name.clone())));
        for (i, (child, kind, name)) in dots.into_iter().chain(listed).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.state().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            STATFS_BLOCKS,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let body = Body::File { data: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
        match self.state().make(parent.0, name, body, mode) {
            Ok((_, attr)) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted lazy filesystem; unmounted on drop.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl LazyFs {
    /// Mounts an empty filesystem at `mountpoint` (an existing empty
    /// directory), served by a background thread of this process. Needs
    /// /dev/fuse, and root or `fusermount3`.
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new()));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("baton-lazyfs".into()), MountOption::RW];
        config.acl = SessionACL::Owner;
        let session = fuser::spawn_mount(Served(Arc::clone(&state)), mountpoint, &config)?;
        Ok(Self { state, session: Some(session), mountpoint: mountpoint.to_owned() })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Drops everything written, created, renamed or removed since its last sync.
    pub fn power_cut(&self) -> CutReport {
        self.state().cut()
    }

    /// When true, every fsync answers success and makes nothing durable.
    pub fn set_fsync_lies(&self, lie: bool) {
        self.state().lie = lie;
    }

    /// After `n` more successful file syncs, every file sync fails with EIO
    /// and makes nothing durable (the pages stay dirty, so a power cut drops
    /// them), until this is called again; `None` stops the failures.
    pub fn fail_file_syncs_after(&self, n: Option<u64>) {
        self.state().syncs_before_eio = n;
    }

    pub fn stats(&self) -> Stats {
        self.state().stats
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: what was synced survives a cut and nothing else does. Method: the
    //! state machine directly (no mount: fast, and runs anywhere), one case per
    //! kind of change; the mounted path is exercised by the power-loss test in
    //! baton-harness.

    use super::*;

    fn file(state: &mut State, name: &str) -> u64 {
        let body = Body::File { data: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new() };
        state.make(ROOT, OsStr::new(name), body, 0o644).expect("create").0
    }

    fn data(state: &mut State, ino: u64) -> Vec<u8> {
        state.file(ino).expect("file").0.clone()
    }

    #[test]
    fn synced_data_survives_and_the_rest_is_dropped() {
        let mut s = State::new();
        let f = file(&mut s, "db");
        s.sync(ROOT).expect("dir sync");
        s.write(f, 0, b"hello").expect("write");
        s.sync(f).expect("sync");
        s.write(f, 5, b" world").expect("write");
        s.write(f, 9000, b"far").expect("write");
        let report = s.cut();
        assert_eq!(data(&mut s, f), b"hello");
        assert_eq!((report.files_reverted, report.inodes_removed), (1, 0));
    }

    #[test]
    fn an_unsynced_truncate_and_a_synced_one() {
        let mut s = State::new();
        let f = file(&mut s, "wal");
        s.sync(ROOT).expect("dir sync");
        s.write(f, 0, &[7; 10_000]).expect("write");
        s.sync(f).expect("sync");
        s.resize(f, 0).expect("truncate");
        s.cut();
        assert_eq!(data(&mut s, f), vec![7; 10_000]);
        // Truncate, write past a hole, sync: the hole reads as zeros after a cut.
        s.resize(f, 0).expect("truncate");
        s.write(f, 5_000, b"x").expect("write");
        s.sync(f).expect("sync");
        s.cut();
        let after = data(&mut s, f);
        assert_eq!(after.len(), 5_001);
        assert!(after[..5_000].iter().all(|b| *b == 0) && after[5_000] == b'x');
    }

    #[test]
    fn directory_changes_need_a_directory_sync() {
        let mut s = State::new();
        let f = file(&mut s, "a");
        s.write(f, 0, b"data").expect("write");
        s.sync(f).expect("file sync");
        // The file's data is synced but its name never was: gone.
        let report = s.cut();
        assert_eq!((report.dirs_reverted, report.inodes_removed), (1, 1));
        assert_eq!(s.lookup(ROOT, OsStr::new("a")), Err(Errno::ENOENT));
        // Created and synced with its directory: kept; an unsynced rename and unlink are undone.
        let f = file(&mut s, "b");
        let g = file(&mut s, "c");
        s.sync(ROOT).expect("dir sync");
        let entries = s.dir(ROOT).expect("root");
        let moved = entries.remove(OsStr::new("b")).expect("b");
        entries.insert("b2".into(), moved);
        entries.remove(OsStr::new("c"));
        s.cut();
        assert_eq!(s.lookup(ROOT, OsStr::new("b")).map(|x| x.0), Ok(f));
        assert_eq!(s.lookup(ROOT, OsStr::new("c")).map(|x| x.0), Ok(g));
        assert_eq!(s.lookup(ROOT, OsStr::new("b2")), Err(Errno::ENOENT));
    }

    #[test]
    fn a_lying_sync_makes_nothing_durable() {
        let mut s = State::new();
        let f = file(&mut s, "db");
        s.sync(ROOT).expect("dir sync");
        s.lie = true;
        s.write(f, 0, b"acknowledged").expect("write");
        s.sync(f).expect("sync");
        s.cut();
        assert!(data(&mut s, f).is_empty());
        assert_eq!(s.stats.lied_syncs, 1);
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let mut s = State::new();
        let f = file(&mut s, "wal");
        s.sync(ROOT).expect("dir sync");
        s.syncs_before_eio = Some(1);
        s.write(f, 0, b"first").expect("write");
        s.sync(f).expect("the one sync left succeeds");
        s.write(f, 5, b" second").expect("write");
        assert_eq!(s.sync(f), Err(Errno::EIO));
        assert_eq!(s.sync(f), Err(Errno::EIO), "and every one after it");
        s.cut();
        assert_eq!(data(&mut s, f), b"first");
        assert_eq!(s.stats.failed_syncs, 2);
    }
}

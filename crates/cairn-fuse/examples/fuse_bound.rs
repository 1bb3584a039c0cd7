//! The raw FUSE bound for `bench/mount`: a file system with one file, `data`, whose bytes come
//! from memory, mounted with the same fuser version, thread count and options as `cairn
//! mount`. Reading it measures what FUSE alone costs on this machine, nothing of Cairn.
//!
//! usage: fuse_bound MOUNTPOINT [SIZE_MIB]   (unmount with `fusermount3 -u MOUNTPOINT`)

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};

const TTL: Duration = Duration::from_secs(1);
const FILE: u64 = 2;
/// The pattern the file repeats (1 MiB of pseudo-random bytes).
const PATTERN_LEN: usize = 1 << 20;

struct Bound {
    size: u64,
    pattern: Vec<u8>,
}

impl Bound {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = if ino == FILE {
            (FileType::RegularFile, self.size, 0o444)
        } else {
            (FileType::Directory, 0, 0o555)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }
}

impl Filesystem for Bound {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "data" {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let from = (at % PATTERN_LEN as u64) as usize;
            let take = ((end - at) as usize).min(PATTERN_LEN - from);
            out.extend_from_slice(&self.pattern[from..from + take]);
            at += take as u64;
        }
        reply.data(&out);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, "data"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mountpoint: PathBuf = args
        .next()
        .ok_or("usage: fuse_bound MOUNTPOINT [SIZE_MIB]")?
        .into();
    let mib: u64 = args.next().map_or(Ok(1024), |s| s.parse())?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let pattern = (0..PATTERN_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let fs = Bound {
        size: mib << 20,
        pattern,
    };
    let mut config = Config::default();
    // As `cairn mount` (crates/cairn-fuse/src/mounts.rs).
    config.n_threads = Some(4);
    config.mount_options = vec![
        MountOption::FSName("fuse-bound".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RO,
    ];
    fuser::Session::new(fs, &mountpoint, &config)?.run()?;
    Ok(())
}

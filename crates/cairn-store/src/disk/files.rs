//! Share files and pack files: names, crash-safe writes, range reads, directory fsync.
//!
//! Layout: `shares/<hh>/<root hex>.<index>` where `hh` is the root's first byte in hex and
//! `index` is decimal. A file being written is named `.tmp.<root hex>.<index>.<n>` in the same
//! directory; anything with that prefix is garbage at open. Packs are `packs/<id>.pack`, with
//! the id as 16 hex digits, appended to in place (see `packs.rs`); a `packs/.tmp.*` file, left
//! by format 2 stores before packs were appended to, is garbage too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::ShareKey;
use crate::StoreError;

/// The name prefix of files being written.
pub(super) const TMP_PREFIX: &str = ".tmp.";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

fn unhex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The directory holding the files of shares whose root starts with byte `first`.
pub(super) fn prefix_dir(shares_dir: &Path, first: u8) -> PathBuf {
    shares_dir.join(hex(&[first]))
}

/// The file name of a share.
pub(super) fn share_file_name(key: &ShareKey) -> String {
    format!("{}.{}", hex(&key[..32]), key[32])
}

/// The path of a share's file.
pub(super) fn share_path(shares_dir: &Path, key: &ShareKey) -> PathBuf {
    prefix_dir(shares_dir, key[0]).join(share_file_name(key))
}

/// Parses a name written by [`share_file_name`] (exactly: lowercase hex, canonical decimal).
pub(super) fn parse_share_file_name(name: &str) -> Option<ShareKey> {
    let (root_hex, index) = name.split_once('.')?;
    if root_hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 33];
    for (i, pair) in root_hex.as_bytes().chunks_exact(2).enumerate() {
        key[i] = (unhex_digit(pair[0])? << 4) | unhex_digit(pair[1])?;
    }
    let index: u8 = index.parse().ok()?;
    key[32] = index;
    (share_file_name(&key) == name).then_some(key)
}

/// Fsyncs a directory, so entries created or renamed in it survive a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(dir, e))
    }
    // Elsewhere directories cannot be opened for fsync; renames are as durable as the OS makes them.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `data` to `path` in `dir` crash-safely: to `tmp` first, fsync, rename, fsync of the
/// directory. On return the file is durable under its final name; on error nothing is left
/// behind.
fn write_durably(
    dir: &Path,
    path: PathBuf,
    tmp: PathBuf,
    data: &[u8],
) -> Result<PathBuf, StoreError> {
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        remove_quietly(&tmp);
        return Err(StoreError::io(tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        remove_quietly(&tmp);
        return Err(StoreError::io(path, e));
    }
    if let Err(e) = sync_dir(dir) {
        remove_quietly(&path);
        return Err(e);
    }
    Ok(path)
}

/// Writes a share file crash-safely (see [`write_durably`]).
pub(super) fn write_share_file(
    shares_dir: &Path,
    key: &ShareKey,
    data: &[u8],
    seq: u64,
) -> Result<PathBuf, StoreError> {
    let dir = prefix_dir(shares_dir, key[0]);
    let path = dir.join(share_file_name(key));
    let tmp = dir.join(format!("{TMP_PREFIX}{}.{seq}", share_file_name(key)));
    write_durably(&dir, path, tmp, data)
}

/// The file name of pack `id`.
pub(super) fn pack_file_name(id: u64) -> String {
    format!("{id:016x}.pack")
}

/// Parses a name written by [`pack_file_name`] (exactly).
pub(super) fn parse_pack_file_name(name: &str) -> Option<u64> {
    let id = u64::from_str_radix(name.strip_suffix(".pack")?, 16).ok()?;
    (pack_file_name(id) == name).then_some(id)
}

/// Reads a packed share: the `header_len` bytes of its header at `offset`, and `range` of the
/// share bytes that follow it. The file must reach `share_end` (the end of the whole share),
/// so that a pack cut short is reported even when the range stops before its end.
pub(super) fn read_pack(
    path: &Path,
    offset: u64,
    header_len: usize,
    range: Range<u64>,
    share_end: u64,
) -> Result<(Vec<u8>, Vec<u8>), ReadFailure> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
        Err(e) => return Err(ReadFailure::Io(e)),
    };
    let actual = f.metadata().map_err(ReadFailure::Io)?.len();
    if actual < share_end {
        return Err(ReadFailure::WrongLength(actual));
    }
    let mut header = vec![0u8; header_len];
    let mut data = vec![0u8; (range.end - range.start) as usize];
    let data_at = offset + header_len as u64 + range.start;
    let read = f
        .read_exact_at(&mut header, offset)
        .and_then(|()| f.read_exact_at(&mut data, data_at));
    match read {
        Ok(()) => Ok((header, data)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let actual = f.metadata().map(|m| m.len()).unwrap_or(0);
            Err(ReadFailure::WrongLength(actual))
        }
        Err(e) => Err(ReadFailure::Io(e)),
    }
}

/// Removes a file, logging (not returning) a failure: used on paths that are garbage either way
/// and are swept at the next open if this fails.
pub(super) fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove file"),
    }
}

/// Why [`read_share_range`] failed.
pub(super) enum ReadFailure {
    /// The file does not exist.
    Missing,
    /// The file's length differs from the record's.
    WrongLength(u64),
    /// Reading failed otherwise.
    Io(io::Error),
}

/// Reads `start..end` of a share file that should be `len` bytes long.
pub(super) fn read_share_range(
    path: &Path,
    len: u64,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, ReadFailure> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
        Err(e) => return Err(ReadFailure::Io(e)),
    };
    let actual = f.metadata().map_err(ReadFailure::Io)?.len();
    if actual != len {
        return Err(ReadFailure::WrongLength(actual));
    }
    let want = usize::try_from(end - start)
        .map_err(|_| ReadFailure::Io(io::Error::from(io::ErrorKind::OutOfMemory)))?;
    let mut buf = vec![0u8; want];
    f.seek(SeekFrom::Start(start)).map_err(ReadFailure::Io)?;
    match f.read_exact(&mut buf) {
        Ok(()) => Ok(buf),
        // Truncated between the length check and the read.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let now = f.metadata().map_or(0, |m| m.len());
            Err(ReadFailure::WrongLength(now))
        }
        Err(e) => Err(ReadFailure::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_file_names_round_trip_and_reject_others() {
        let mut key = [0u8; 33];
        key[0] = 0xab;
        key[31] = 0x01;
        key[32] = 200;
        let name = share_file_name(&key);
        assert_eq!(name.len(), 64 + 4);
        assert!(name.starts_with("ab"));
        assert_eq!(parse_share_file_name(&name), Some(key));
        assert_eq!(parse_share_file_name(&name.to_uppercase()), None);
        assert_eq!(
            parse_share_file_name(&format!("{}.0200", &name[..64])),
            None
        );
        assert_eq!(parse_share_file_name(&format!("{}.256", &name[..64])), None);
        assert_eq!(parse_share_file_name(&name[1..]), None);
        assert_eq!(parse_share_file_name("x"), None);
        assert_eq!(
            parse_share_file_name(&format!("{TMP_PREFIX}{name}.3")),
            None
        );
    }
}

//! The acknowledged-writes mark: a 64-byte file next to sled's files that holds the
//! newest [`WriteMark`] whose flush completed, so that [`super::SledStore::open`] can tell
//! when sled came back without writes it had acknowledged.
//!
//! Layout: two 32-byte slots, each `magic (8) ‖ generation u64 ‖ at_ms u64 ‖ check (8)`,
//! integers big-endian, `check` the first 8 bytes of SHA-256 over the first 24. Writes
//! alternate between the slots and are synced (`fdatasync`) before the flush that made
//! them returns; a write torn by a power cut spoils one slot only, and the reader takes the
//! valid slot with the highest generation (an older mark: at worst a loss goes unnoticed,
//! never a false alarm).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::WriteMark;

const MAGIC: &[u8; 8] = b"lkauthm1";
const SLOT_LEN: usize = 32;
const FILE_LEN: usize = 2 * SLOT_LEN;

/// What the mark file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// No mark file, or an empty one (a vault from before marks, a fresh one, or a crash
    /// between creating the file and its first write).
    Missing,
    /// The file exists but neither slot verifies.
    Damaged,
    /// The newest valid mark.
    Found(WriteMark),
}

impl Recorded {
    /// The recorded generation (0 when none).
    pub(super) fn generation(self) -> u64 {
        match self {
            Recorded::Found(mark) => mark.generation,
            Recorded::Missing | Recorded::Damaged => 0,
        }
    }
}

fn check(body: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(body);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(mark: WriteMark) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&mark.generation.to_be_bytes());
    slot[16..24].copy_from_slice(&mark.at_ms.to_be_bytes());
    let sum = check(&slot[..24]);
    slot[24..].copy_from_slice(&sum);
    slot
}

fn decode(slot: &[u8]) -> Option<WriteMark> {
    if slot.len() != SLOT_LEN || &slot[..8] != MAGIC || slot[24..] != check(&slot[..24]) {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Some(WriteMark {
        generation: u64_at(8),
        at_ms: u64_at(16),
    })
}

/// Encodes a mark as sled stores it (`generation ‖ at_ms`, big-endian).
pub(super) fn to_value(mark: WriteMark) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&mark.generation.to_be_bytes());
    v[8..].copy_from_slice(&mark.at_ms.to_be_bytes());
    v
}

/// Decodes [`to_value`]; `None` for any other length.
pub(super) fn from_value(v: &[u8]) -> Option<WriteMark> {
    let v: &[u8; 16] = v.try_into().ok()?;
    let (g, t) = v.split_at(8);
    Some(WriteMark {
        generation: u64::from_be_bytes(g.try_into().ok()?),
        at_ms: u64::from_be_bytes(t.try_into().ok()?),
    })
}

/// Reads the mark file at `path`.
///
/// # Errors
/// I/O errors other than "not found".
pub(super) fn read(path: &Path) -> io::Result<Recorded> {
    let mut bytes = Vec::with_capacity(FILE_LEN);
    match File::open(path) {
        Ok(file) => {
            file.take(FILE_LEN as u64 + 1).read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recorded::Missing),
        Err(e) => return Err(e),
    }
    if bytes.is_empty() {
        return Ok(Recorded::Missing);
    }
    Ok(bytes
        .chunks(SLOT_LEN)
        .take(2)
        .filter_map(decode)
        .max()
        .map_or(Recorded::Damaged, Recorded::Found))
}

/// The open mark file, written by flushes.
#[derive(Debug)]
pub(super) struct MarkFile {
    file: File,
    /// Generation of the newest mark on disk (0: none valid).
    on_disk: u64,
    /// The slot the next write goes to.
    next_slot: u64,
}

impl MarkFile {
    /// Opens the mark file at `path` for writing, whose content `recorded` is. When it is
    /// [`Recorded::Missing`], creates it holding `initial` (the generation sled holds, or
    /// 0), synced with its directory entry.
    ///
    /// # Errors
    /// I/O errors (permissions, disk full).
    pub(super) fn open(
        path: &Path,
        recorded: Recorded,
        initial: WriteMark,
    ) -> io::Result<MarkFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut mark = MarkFile {
            file,
            on_disk: recorded.generation(),
            next_slot: 0,
        };
        if recorded == Recorded::Missing {
            let mut both = [0u8; FILE_LEN];
            both[..SLOT_LEN].copy_from_slice(&encode(initial));
            mark.file.write_all_at(&both, 0)?;
            mark.file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            mark.on_disk = initial.generation;
            mark.next_slot = 1;
        } else {
            // Overwrite the older (or invalid) slot first.
            let mut bytes = [0u8; FILE_LEN];
            let n = mark.file.read_at(&mut bytes, 0)?;
            let first = decode(&bytes[..SLOT_LEN.min(n)]).map_or(0, |m| m.generation);
            let second = (n >= FILE_LEN)
                .then(|| decode(&bytes[SLOT_LEN..]))
                .flatten()
                .map_or(0, |m| m.generation);
            mark.next_slot = u64::from(first > second);
        }
        Ok(mark)
    }

    /// Records `mark` (synced) unless the file already holds this generation or a newer
    /// one, so concurrent flushes share one write (group commit).
    ///
    /// # Errors
    /// I/O errors: the mark was not recorded.
    pub(super) fn record(&mut self, mark: WriteMark) -> io::Result<()> {
        if mark.generation <= self.on_disk {
            return Ok(());
        }
        let offset = (self.next_slot % 2) * SLOT_LEN as u64;
        self.file.write_all_at(&encode(mark), offset)?;
        self.file.sync_data()?;
        self.on_disk = mark.generation;
        self.next_slot += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(generation: u64) -> WriteMark {
        WriteMark {
            generation,
            at_ms: 1_000 + generation,
        }
    }

    #[test]
    fn writes_alternate_slots_and_the_newest_valid_slot_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        assert_eq!(read(&path).unwrap(), Recorded::Missing);
        let mut file = MarkFile::open(&path, Recorded::Missing, mark(0)).unwrap();
        assert_eq!(read(&path).unwrap(), Recorded::Found(mark(0)));
        file.record(mark(3)).unwrap();
        file.record(mark(2)).unwrap(); // older: ignored
        assert_eq!(read(&path).unwrap(), Recorded::Found(mark(3)));
        file.record(mark(4)).unwrap();
        assert_eq!(read(&path).unwrap(), Recorded::Found(mark(4)));
        // A torn write of the newest slot leaves the other one.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), FILE_LEN);
        let mut torn = bytes.clone();
        torn[8 + 7] ^= 1; // slot 0 holds 4 (0, then 3 in slot 1, 4 in slot 0)
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(read(&path).unwrap(), Recorded::Found(mark(3)));
        // Reopened: the next write replaces the spoiled slot, not the valid one.
        let mut file = MarkFile::open(&path, read(&path).unwrap(), mark(0)).unwrap();
        file.record(mark(5)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(decode(&bytes[..SLOT_LEN]), Some(mark(5)));
        assert_eq!(decode(&bytes[SLOT_LEN..]), Some(mark(3)));
        std::fs::write(&path, [0x55u8; 40]).unwrap();
        assert_eq!(read(&path).unwrap(), Recorded::Damaged);
        std::fs::write(&path, []).unwrap();
        assert_eq!(read(&path).unwrap(), Recorded::Missing);
    }
}

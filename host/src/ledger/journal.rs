//! The ledger's write-ahead journal: what makes a `record` durable with one small `fdatasync`.
//!
//! A durable redb commit writes its B-tree pages and header and syncs them: about ten
//! `pwrite`s and an `fdatasync`, 0.35 ms on a quiet disk of the benchmark VM and 1.5–3 ms
//! when other processes write. The pipeline waits for it on every record (by default each
//! partition has one ledger write in flight), so it bounded a handler at a few thousand
//! records per second. The journal takes that wait off the path: the writer appends a batch's
//! entries here in one `pwrite`, `fdatasync`s, keeps them in memory for lookups and only then
//! answers. Now and then ([`CHECKPOINT_BYTES`], [`CHECKPOINT_BATCHES`],
//! [`CHECKPOINT_INTERVAL`], a sweep, and when the ledger closes) what memory holds goes into
//! redb in one durable commit and the journal that held it is emptied. A ledger has two
//! journals: while a checkpoint thread commits one journal's records, the writer appends to
//! the other, whose generation is higher. Opening the ledger replays both into redb, the lower
//! generation first, before anything else.
//!
//! # Layout
//!
//! A header block of [`HEADER_BYTES`]: a magic, the journal's *generation* and a CRC-32 of the
//! two. Frames follow it: `len: u32 LE`, `crc: u32 LE`, `len` bytes of payload (postcard of a
//! [`JournalRecord`]). A frame's CRC covers the generation followed by the payload, so a frame
//! left behind by an earlier generation fails its check and reads as the end. Emptying the
//! journal writes a header with the next generation and syncs it; the file is never truncated
//! (its blocks stay allocated and later appends overwrite them in place).
//!
//! # Crash cases
//!
//! - Killed before a batch's `fdatasync` returns: nobody was told the batch is durable. Its
//!   frames may be whole, cut or missing; replay stops at the first frame that does not check.
//! - Killed between redb's durable checkpoint and the new header: the journal still holds
//!   entries redb has; replaying them writes the same values again (a record replaces).
//! - Killed while a checkpoint is under way: both journals hold records, the one being
//!   checkpointed the older ones; replay takes the lower generation first, so the last record
//!   of an id wins.
//! - A header that does not read (never finished writing, or damaged): the header is only
//!   rewritten once redb holds the journal's entries durably, so the file is emptied and a fresh
//!   journal started, with a warning.
//!
//! Sweeps are not journaled: each runs inside a checkpoint, durable with it.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};

/// The journal grows to about this size before redb takes its contents in a durable commit.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;

/// Most batches between two checkpoints. A checkpoint is one durable redb commit of what the
/// batches since the last one recorded; it runs beside the writer (see `file.rs`), so its
/// length holds up no record, but its cost grows with the B-tree pages it rewrites: event ids
/// are random, so nearly every entry of a small checkpoint dirties a page of its own, and a
/// larger one shares them (at 100 k records/s, checkpoints of 100 ms wrote ~37 MB/s).
pub const CHECKPOINT_BATCHES: u32 = 4096;

/// The longest the journal (and memory, twice: the records since the last freeze and those of
/// the checkpoint under way) holds entries redb does not have (when records arrive).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);

/// Bytes before the first frame; the header is rewritten alone in its block.
pub const HEADER_BYTES: u64 = 4096;

const MAGIC: &[u8; 8] = b"kasmjnl1";
const FRAME_HEAD: usize = 8;
/// No entry comes near this (keys are at most 1 KiB each); a longer length is damage.
const MAX_FRAME: usize = 1 << 20;

/// One journaled `record`: what the writer applies to redb again on replay. Borrowed from the
/// writer's batch when appended, owned when read back; one struct, so one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord<'a> {
    /// Handler namespace.
    pub handler: Cow<'a, str>,
    /// Event id.
    pub event_id: Cow<'a, str>,
    /// The entry's `at_ms` (the age index key).
    pub at_ms: i64,
    /// The stored value (version byte + postcard), as redb holds it.
    pub value: Cow<'a, [u8]>,
}

/// The open journal of one ledger file. Only the writer thread touches it.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    generation: u64,
    /// Where the next frame goes.
    end: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Open (or create) the journal at `path` and read the records it holds, oldest first.
    /// The caller applies them to redb durably and then calls [`Journal::reset`].
    pub fn open(path: &Path) -> anyhow::Result<(Self, Vec<JournalRecord<'static>>)> {
        let what = || format!("open ledger journal {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(what)?;
        let mut journal = Self {
            path: path.to_owned(),
            file,
            generation: 0,
            end: HEADER_BYTES,
            buf: Vec::new(),
        };
        let mut header = [0_u8; 20];
        let read = read_up_to(&journal.file, &mut header, 0).with_context(what)?;
        match parse_header(&header[..read]) {
            Some(generation) => journal.generation = generation,
            None => {
                if read > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "ledger journal header does not read; starting a fresh journal"
                    );
                }
                // Frames of whatever generation the header held must not come back under the
                // fresh one: drop them with the file's contents.
                journal.file.set_len(0).with_context(what)?;
                journal.reset().with_context(what)?;
                return Ok((journal, Vec::new()));
            }
        }
        let records = journal.read_frames().with_context(what)?;
        Ok((journal, records))
    }

    /// Bytes of frames since the last reset.
    pub fn len(&self) -> u64 {
        self.end - HEADER_BYTES
    }

    /// Append `records` in one write and make them durable (`fdatasync`).
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = JournalRecord<'a>>,
    ) -> anyhow::Result<()> {
        self.buf.clear();
        for record in records {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0; FRAME_HEAD]);
            postcard::to_io(&record, &mut self.buf).context("encode journal record")?;
            let payload = &self.buf[start + FRAME_HEAD..];
            let len = u32::try_from(payload.len()).context("journal record over 4 GiB")?;
            let crc = frame_crc(self.generation, payload);
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.buf[start + 4..start + FRAME_HEAD].copy_from_slice(&crc.to_le_bytes());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.end)
            .and_then(|()| self.file.sync_data())
            .with_context(|| {
                format!(
                    "append {} bytes to ledger journal {}",
                    self.buf.len(),
                    self.path.display()
                )
            })?;
        self.end += self.buf.len() as u64;
        Ok(())
    }

    /// The generation of the frames this journal holds (higher is newer, across the two
    /// journals of a ledger).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Start the next generation: the frames written so far no longer count. Call only once
    /// redb holds every one of them durably.
    pub fn reset(&mut self) -> anyhow::Result<()> {
        self.reset_to(self.generation.wrapping_add(1))
    }

    /// [`Journal::reset`] to `generation`, which must be one this file's frames were never
    /// written with (the ledger uses one above both of its journals' generations).
    pub fn reset_to(&mut self, generation: u64) -> anyhow::Result<()> {
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&generation.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("reset ledger journal {}", self.path.display()))?;
        self.generation = generation;
        self.end = HEADER_BYTES;
        Ok(())
    }

    fn read_frames(&mut self) -> anyhow::Result<Vec<JournalRecord<'static>>> {
        // One read: the journal is at most a checkpoint's worth (a few MiB) plus one batch.
        let size = usize::try_from(self.file.metadata()?.len()).context("journal size")?;
        let mut bytes = vec![0; size];
        let size = read_up_to(&self.file, &mut bytes, 0)?;
        let bytes = &bytes[..size];
        let mut records = Vec::new();
        let mut pos = HEADER_BYTES as usize;
        while let Some(head) = bytes.get(pos..pos + FRAME_HEAD) {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let body = pos + FRAME_HEAD;
            let Some(payload) = bytes
                .get(body..body + len)
                .filter(|_| len > 0 && len <= MAX_FRAME)
            else {
                break;
            };
            if frame_crc(self.generation, payload) != crc {
                break;
            }
            // `Cow` fields deserialize owned: the records outlive `bytes`.
            let record: JournalRecord<'static> = postcard::from_bytes(payload).map_err(|e| {
                anyhow!("journal frame at byte {pos} checks but does not decode: {e}")
            })?;
            records.push(record);
            pos = body + len;
        }
        self.end = pos as u64;
        Ok(records)
    }
}

fn frame_crc(generation: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn parse_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    if crc32fast::hash(&bytes[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

/// Read into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(i: i64) -> JournalRecord<'static> {
        JournalRecord {
            handler: "audit".into(),
            event_id: format!("e{i}").into(),
            at_ms: i,
            value: vec![1, 2, 3, i as u8].into(),
        }
    }

    fn append(journal: &mut Journal, records: &[JournalRecord<'static>]) {
        journal.append(records.iter().cloned()).unwrap();
    }

    #[test]
    fn records_come_back_in_order_until_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        let first: Vec<_> = (0..10).map(record).collect();
        append(&mut journal, &first[..4]);
        append(&mut journal, &first[4..]);
        drop(journal);

        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, first);
        // Appends after a reopen go after what was there.
        append(&mut journal, &[record(10)]);
        drop(journal);
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found.len(), 11);

        // After a reset the old frames (still in the file) no longer count, even where the
        // new generation wrote fewer bytes than the old one.
        journal.reset().unwrap();
        append(&mut journal, &[record(99)]);
        drop(journal);
        let (_journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, vec![record(99)]);
    }

    #[test]
    fn a_torn_tail_ends_the_replay_at_the_last_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, _) = Journal::open(&path).unwrap();
        append(&mut journal, &[record(1), record(2)]);
        let whole = journal.end;
        append(&mut journal, &[record(3)]);
        drop(journal);

        // The last frame is cut short, as by a crash in the middle of the write.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole + 5).unwrap();
        drop(file);
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found, vec![record(1), record(2)]);
        // The next append overwrites the torn bytes.
        append(&mut journal, &[record(4)]);
        drop(journal);
        let (_, found) = Journal::open(&path).unwrap();
        assert_eq!(found, vec![record(1), record(2), record(4)]);

        // A flipped byte inside a frame: replay stops before it.
        let bytes = std::fs::read(&path).unwrap();
        let mut damaged = bytes.clone();
        damaged[HEADER_BYTES as usize + FRAME_HEAD + 2] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let (_, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_damaged_header_starts_a_fresh_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut journal, _) = Journal::open(&path).unwrap();
        append(&mut journal, &[record(1)]);
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        assert_eq!(journal.len(), 0);
    }
}

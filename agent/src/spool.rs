//! The spool: results, metrics and events wait here, numbered, until the control plane says
//! it has committed them (`results/ack`).
//!
//! Every entry gets the next per-agent sequence number and is appended to a journal file in
//! the state dir (written to the kernel at once, so a killed agent loses nothing), and the
//! sequence continues after a restart. Durability against a power cut is a group commit:
//! [`Spool::sync`] fsyncs the journal once for everything appended since the last sync, and
//! the session calls it before it sends anything, so no entry (and no seq) reaches the
//! control plane before it is on disk, and `next_seq` can never fall behind what the control
//! plane stored. Compaction writes a new file, fsyncs it, renames it over the journal and
//! fsyncs the directory.
//!
//! Memory holds an entry's text only until it is first sent: then only its seq, kind and
//! where its text lies in the journal (64 bytes), and a resend reads the text back. So a
//! spool at its bounds (100,000 entries, 64 MiB by default: a long outage of a busy agent)
//! costs a few MiB of memory, not its size, and a busy agent whose acks lag holds only what
//! it has not sent yet.
//!
//! An ack names exact seq ranges and appends an ack line; a drop at a bound appends a cut
//! line; the journal is rewritten compactly once it holds mostly dead lines. The bounds are
//! entries and bytes: when one is hit the oldest entries go first and the count of dropped
//! entries is kept (and reported in heartbeats), never silent. An entry larger than any batch
//! may be ([`MAX_ENTRY_BYTES`]) could never be sent: it is refused at push (and dropped at
//! open), counted as unsendable and reported, never resent forever.
//!
//! Journal lines: `{"h":{"next_seq":N,"cut":C,"dropped":D,"unsendable":U}}` (header after
//! compaction), `{"e":{"seq":N,"k":"r|m|e","d":<item JSON>}}`, `{"ack":[[from,to],…]}`,
//! `{"cut":N,"dropped":D}` (everything up to N dropped), `{"unsendable":U}`. A torn last
//! line is skipped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Kind of a spooled entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "r")]
    Result,
    #[serde(rename = "m")]
    Metrics,
    #[serde(rename = "e")]
    Event,
}

/// One spooled entry: its seq and where the item's JSON (which carries the same seq) lies in
/// the journal; the JSON itself too until the entry is first sent.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    kind: Kind,
    /// Byte offset of the item's JSON in the journal.
    at: u64,
    /// Length of the item's JSON in bytes.
    len: usize,
    /// The JSON while it has not been sent (afterwards it is read back from the journal).
    text: Option<Box<str>>,
    sent_at: Option<Instant>,
}

/// The journal line of an entry, up to its item's JSON.
fn entry_line_head(seq: u64, kind: Kind) -> String {
    let k = match kind {
        Kind::Result => "r",
        Kind::Metrics => "m",
        Kind::Event => "e",
    };
    format!("{{\"e\":{{\"seq\":{seq},\"k\":\"{k}\",\"d\":")
}

/// What closes an entry's journal line after its item's JSON.
const ENTRY_LINE_TAIL: &str = "}}";

/// Reads an entry's text back from the journal `journal` at `path`.
fn read_text(journal: &File, path: &Path, entry: &Entry) -> Result<String, SpoolError> {
    let err = |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = vec![0u8; entry.len];
    journal.read_exact_at(&mut bytes, entry.at).map_err(err)?;
    String::from_utf8(bytes)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The largest entry that fits a batch payload the control plane accepts, in bytes.
pub const MAX_ENTRY_BYTES: usize = vantage_mqtt::MAX_PAYLOAD_BYTES - 64;

#[derive(Serialize, Deserialize)]
struct Header {
    next_seq: u64,
    cut: u64,
    dropped: u64,
    #[serde(default)]
    unsendable: u64,
}

#[derive(Serialize, Deserialize)]
struct EntryLine<'a> {
    seq: u64,
    k: Kind,
    #[serde(borrow)]
    d: &'a RawValue,
}

#[derive(Deserialize)]
struct AnyLine<'a> {
    #[serde(default)]
    h: Option<Header>,
    #[serde(default, borrow)]
    e: Option<EntryLine<'a>>,
    #[serde(default)]
    cut: Option<u64>,
    #[serde(default)]
    dropped: Option<u64>,
    #[serde(default)]
    ack: Option<Vec<(u64, u64)>>,
    #[serde(default)]
    unsendable: Option<u64>,
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The journal (or its directory) cannot be read, written or synced.
    #[error("spool journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The entry is larger than any batch may be: it could never be sent. It is counted as
    /// unsendable, not stored.
    #[error("entry of {len} bytes exceeds the largest sendable entry of {max} bytes")]
    Unsendable { len: usize, max: usize },
}

/// The spool.
pub struct Spool {
    path: PathBuf,
    /// The journal, opened for appending (and reading entries back); every line goes through
    /// [`Spool::append_line`].
    journal: File,
    /// Length of the journal up to its last whole line.
    journal_len: u64,
    /// Whether the journal has writes since its last fsync.
    dirty: bool,
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
    cut: u64,
    dropped: u64,
    unsendable: u64,
    journal_lines: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("len", &self.entries.len())
            .field("next_seq", &self.next_seq)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Spool {
    /// Opens (or creates) the journal in `state_dir` and replays it.
    ///
    /// # Errors
    /// The journal cannot be read or written.
    pub fn open(
        state_dir: &Path,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Spool, SpoolError> {
        let path = state_dir.join("spool.jsonl");
        let err = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let mut entries = VecDeque::new();
        let (mut next_seq, mut cut, mut dropped, mut unsendable) = (1u64, 0u64, 0u64, 0u64);
        let mut lines = 0usize;
        let mut acked: Vec<(u64, u64)> = Vec::new();
        if path.exists() {
            let mut reader = BufReader::new(File::open(&path).map_err(err)?);
            let (mut buf, mut line_at) = (Vec::new(), 0u64);
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                let start = line_at;
                line_at += n as u64;
                let Ok(line) = std::str::from_utf8(&buf) else {
                    break;
                };
                lines += 1;
                let Ok(parsed) = serde_json::from_str::<AnyLine<'_>>(line) else {
                    continue;
                };
                if let Some(header) = parsed.h {
                    next_seq = next_seq.max(header.next_seq);
                    cut = cut.max(header.cut);
                    dropped = header.dropped;
                    unsendable = header.unsendable;
                }
                if let Some(entry) = parsed.e {
                    next_seq = next_seq.max(entry.seq + 1);
                    // The item's JSON is borrowed from the line: its place in the file.
                    let within = entry.d.get().as_ptr() as usize - line.as_ptr() as usize;
                    entries.push_back(Entry {
                        seq: entry.seq,
                        kind: entry.k,
                        at: start + within as u64,
                        len: entry.d.get().len(),
                        text: None,
                        sent_at: None,
                    });
                }
                if let Some(c) = parsed.cut {
                    cut = cut.max(c);
                }
                if let Some(d) = parsed.dropped {
                    dropped = dropped.max(d);
                }
                if let Some(ranges) = parsed.ack {
                    acked.extend(ranges);
                }
                if let Some(u) = parsed.unsendable {
                    unsendable = unsendable.max(u);
                }
            }
        }
        entries.retain(|e| e.seq > cut && !acked.iter().any(|(a, b)| (*a..=*b).contains(&e.seq)));
        // Entries a bound of an older release let in but no batch can carry.
        let before = entries.len();
        entries.retain(|e| e.len <= MAX_ENTRY_BYTES);
        unsendable += (before - entries.len()) as u64;
        let bytes = entries.iter().map(|e| e.len).sum();
        let journal = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let journal_len = journal.metadata().map_err(err)?.len();
        let mut spool = Spool {
            path,
            journal,
            journal_len,
            dirty: false,
            entries,
            bytes,
            next_seq,
            cut,
            dropped,
            unsendable,
            journal_lines: lines,
            max_entries,
            max_bytes,
        };
        spool.enforce_bounds()?;
        spool.compact()?;
        Ok(spool)
    }

    fn err(&self) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries waiting for an ack.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped at a bound since the state began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Entries refused because no batch could carry them, since the state began.
    pub fn unsendable(&self) -> u64 {
        self.unsendable
    }

    /// Whether entries were appended since the last [`Spool::sync`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Group commit: makes everything appended so far durable with one fsync of the journal.
    /// Cheap when nothing was appended since the last call.
    ///
    /// # Errors
    /// The journal cannot be flushed or synced.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        self.journal.sync_data().map_err(self.err())?;
        self.dirty = false;
        Ok(())
    }

    /// Allocates the next seq; `make` builds the item's JSON with it. The entry is written to
    /// the journal (to the kernel: a killed process loses nothing) before this returns;
    /// [`Spool::sync`] makes it durable against a power cut.
    ///
    /// # Errors
    /// The journal cannot be written, or the entry is larger than any batch may be (it is
    /// counted as unsendable then, and its seq is not spent).
    pub fn push(
        &mut self,
        kind: Kind,
        make: impl FnOnce(u64) -> String,
    ) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let json = make(seq);
        if json.len() > MAX_ENTRY_BYTES {
            self.unsendable += 1;
            let line = format!("{{\"unsendable\":{}}}", self.unsendable);
            self.append_line(&line)?;
            self.dirty = true;
            return Err(SpoolError::Unsendable {
                len: json.len(),
                max: MAX_ENTRY_BYTES,
            });
        }
        // Only valid JSON goes into the journal: a line that does not parse is skipped at open.
        serde_json::from_str::<&RawValue>(&json).map_err(|e| SpoolError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let head = entry_line_head(seq, kind);
        let at = self.journal_len + head.len() as u64;
        let mut line = String::with_capacity(head.len() + json.len() + ENTRY_LINE_TAIL.len());
        line.push_str(&head);
        line.push_str(&json);
        line.push_str(ENTRY_LINE_TAIL);
        self.append_line(&line)?;
        self.dirty = true;
        // The seq is spent only once the entry is in the journal: a failed write leaves
        // neither a gap nor a line that a later write could complete.
        self.next_seq += 1;
        self.bytes += json.len();
        self.entries.push_back(Entry {
            seq,
            kind,
            at,
            len: json.len(),
            text: Some(json.into_boxed_str()),
            sent_at: None,
        });
        self.enforce_bounds()?;
        Ok(seq)
    }

    fn enforce_bounds(&mut self) -> Result<(), SpoolError> {
        let mut cut_to = None;
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.len;
                self.dropped += 1;
                cut_to = Some(old.seq);
            }
        }
        if let Some(seq) = cut_to {
            self.cut = self.cut.max(seq);
            let line = format!("{{\"cut\":{seq},\"dropped\":{}}}", self.dropped);
            self.append_line(&line)?;
            if self.journal_lines > 2 * self.entries.len() + 1000 {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// The control plane committed (or refused for good) exactly the seqs in `ranges`:
    /// forget those entries. Returns how many were forgotten.
    ///
    /// # Errors
    /// The journal cannot be written.
    pub fn ack(&mut self, ranges: &[(u64, u64)]) -> Result<usize, SpoolError> {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|e| {
            let acked = ranges.iter().any(|(a, b)| (*a..=*b).contains(&e.seq));
            if acked {
                freed += e.len;
            }
            !acked
        });
        let n = before - self.entries.len();
        if n == 0 {
            return Ok(0);
        }
        self.bytes -= freed;
        let line = serde_json::json!({ "ack": ranges });
        self.append_line(&line.to_string())?;
        if self.journal_lines > 2 * self.entries.len() + 1000 {
            self.compact()?;
        }
        Ok(n)
    }

    /// Appends one line to the journal (to the kernel), whole or not at all: a write that
    /// fails part way (a full disk) is cut back to the last whole line, so no torn line is
    /// left for a later line to be glued to, and nothing stays buffered to be written later.
    fn append_line(&mut self, line: &str) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(source) = self.journal.write_all(&bytes) {
            if let Err(error) = self.journal.set_len(self.journal_len) {
                tracing::warn!(%error, "Cannot cut a failed journal write back");
            }
            return Err(SpoolError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.journal_len += bytes.len() as u64;
        self.journal_lines += 1;
        Ok(())
    }

    /// Rewrites the journal with only the live entries.
    fn compact(&mut self) -> Result<(), SpoolError> {
        let tmp = self.path.with_extension("tmp");
        let written = self.write_compacted(&tmp);
        if written.is_err() {
            // A full disk: leave the journal as it is and free what the attempt took.
            let _ = std::fs::remove_file(&tmp);
        }
        let offsets = written?;
        std::fs::rename(&tmp, &self.path).map_err(self.err())?;
        // The entries' texts now lie where the new journal put them.
        for (entry, at) in self.entries.iter_mut().zip(offsets) {
            entry.at = at;
        }
        // The rename is durable only once the directory is synced.
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.err())?;
        }
        self.dirty = false;
        self.journal = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(self.err())?;
        self.journal_len = self.journal.metadata().map_err(self.err())?.len();
        self.journal_lines = self.entries.len() + 1;
        Ok(())
    }

    /// Writes the header and the live entries to `tmp` and syncs it; returns where each
    /// entry's text lies in it.
    fn write_compacted(&self, tmp: &Path) -> Result<Vec<u64>, SpoolError> {
        let mut out = BufWriter::new(File::create(tmp).map_err(self.err())?);
        let header = Header {
            next_seq: self.next_seq,
            cut: self.cut,
            dropped: self.dropped,
            unsendable: self.unsendable,
        };
        let header = format!("{}\n", serde_json::json!({ "h": header }));
        out.write_all(header.as_bytes()).map_err(self.err())?;
        let mut written = header.len() as u64;
        let mut offsets = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let head = entry_line_head(entry.seq, entry.kind);
            let text;
            let body = match &entry.text {
                Some(held) => held,
                None => {
                    text = read_text(&self.journal, &self.path, entry)?;
                    text.as_str()
                }
            };
            offsets.push(written + head.len() as u64);
            for part in [head.as_str(), body, ENTRY_LINE_TAIL, "\n"] {
                out.write_all(part.as_bytes()).map_err(self.err())?;
                written += part.len() as u64;
            }
        }
        out.flush().map_err(self.err())?;
        out.get_ref().sync_all().map_err(self.err())?;
        Ok(offsets)
    }

    /// The control plane already holds seqs `from..next_seq` from an earlier life of this
    /// state (it was rewound): gives every entry in that range a new seq past both `next_seq`
    /// and this spool's counter, in order, and rewrites the journal. Returns how many entries
    /// were renumbered.
    ///
    /// # Errors
    /// The journal cannot be rewritten.
    pub fn raise_seq(&mut self, from: u64, next_seq: u64) -> Result<usize, SpoolError> {
        let mut fresh = self.next_seq.max(next_seq);
        let mut n = 0;
        let (journal, path) = (&self.journal, &self.path);
        for entry in &mut self.entries {
            if !(from..next_seq).contains(&entry.seq) {
                continue;
            }
            let text;
            let held = match &entry.text {
                Some(held) => held,
                None => {
                    text = read_text(journal, path, entry)?;
                    text.as_str()
                }
            };
            let Ok(mut item) = serde_json::from_str::<serde_json::Value>(held) else {
                continue;
            };
            if let Some(object) = item.as_object_mut() {
                object.insert("seq".into(), fresh.into());
            }
            let renumbered = item.to_string();
            entry.len = renumbered.len();
            entry.text = Some(renumbered.into_boxed_str());
            entry.seq = fresh;
            entry.sent_at = None;
            fresh += 1;
            n += 1;
        }
        self.next_seq = fresh;
        // Entries must stay in seq order for batching and cuts.
        self.entries.make_contiguous().sort_by_key(|e| e.seq);
        self.bytes = self.entries.iter().map(|e| e.len).sum();
        self.compact()?;
        Ok(n)
    }

    /// After a reconnect everything unacknowledged must go again.
    pub fn mark_all_unsent(&mut self) {
        for entry in &mut self.entries {
            entry.sent_at = None;
        }
    }

    /// Entries sent longer than `age` ago without an ack are sent again.
    pub fn expire_sent(&mut self, age: Duration) {
        let now = Instant::now();
        for entry in &mut self.entries {
            if entry.sent_at.is_some_and(|t| now.duration_since(t) > age) {
                entry.sent_at = None;
            }
        }
    }

    /// Takes up to `max_items` unsent entries of one kind, in seq order, as a batch payload
    /// `{"v":1,"items":[…]}` no larger than about `max_bytes`, marking them sent (and
    /// letting go of their texts, which a resend reads back from the journal).
    ///
    /// # Errors
    /// An entry's text cannot be read back from the journal; nothing is marked sent then.
    pub fn next_batch(
        &mut self,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Option<(Kind, String)>, SpoolError> {
        let now = Instant::now();
        let Some(start) = self.entries.iter().position(|e| e.sent_at.is_none()) else {
            return Ok(None);
        };
        let kind = self.entries[start].kind;
        let mut payload = format!("{{\"v\":{},\"items\":[", vantage_mqtt::PROTOCOL_VERSION);
        let mut taken = Vec::new();
        let (journal, path) = (&self.journal, &self.path);
        for (i, entry) in self.entries.iter().enumerate().skip(start) {
            if entry.sent_at.is_some() {
                continue;
            }
            if entry.kind != kind
                || taken.len() >= max_items
                || (!taken.is_empty() && payload.len() + entry.len > max_bytes)
            {
                break;
            }
            if !taken.is_empty() {
                payload.push(',');
            }
            match &entry.text {
                Some(text) => payload.push_str(text),
                None => payload.push_str(&read_text(journal, path, entry)?),
            }
            taken.push(i);
        }
        // Only now, with the whole batch read: sent, and from here on read back when resent.
        for i in taken {
            let entry = &mut self.entries[i];
            entry.sent_at = Some(now);
            entry.text = None;
        }
        payload.push_str("]}");
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64) -> String {
        format!("{{\"seq\":{seq}}}")
    }

    #[test]
    fn entries_survive_a_restart_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        for _ in 0..5 {
            spool.push(Kind::Result, item).unwrap();
        }
        assert_eq!(spool.ack(&[(1, 2)]).unwrap(), 2);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.next_seq(), 6);
        let (kind, payload) = spool.next_batch(10, 1 << 20).unwrap().unwrap();
        assert_eq!(kind, Kind::Result);
        assert_eq!(
            payload,
            "{\"v\":1,\"items\":[{\"seq\":3},{\"seq\":4},{\"seq\":5}]}"
        );
        assert!(
            spool.next_batch(10, 1 << 20).unwrap().is_none(),
            "sent entries are not sent twice"
        );
        spool.mark_all_unsent();
        assert!(spool.next_batch(10, 1 << 20).unwrap().is_some());
        assert_eq!(spool.ack(&[(3, 3), (5, 5)]).unwrap(), 2);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!(spool.len(), 1, "only seq 4 is left after exact acks");
        assert_eq!(
            spool.next_batch(10, 1 << 20).unwrap().unwrap().1,
            "{\"v\":1,\"items\":[{\"seq\":4}]}"
        );
        spool.ack(&[(4, 4)]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert!(spool.is_empty());
        assert_eq!(
            spool.next_seq(),
            6,
            "seq continues even when nothing is left"
        );
    }

    /// A sent entry keeps no text in memory, and a resend reads the same bytes back from the
    /// journal, before and after a compaction and a restart.
    #[test]
    fn sent_entries_are_read_back_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1000, 1 << 20).unwrap();
        let long = |seq: u64| format!("{{\"seq\":{seq},\"reason\":\"{}\"}}", "é".repeat(100));
        for _ in 0..20 {
            spool.push(Kind::Result, long).unwrap();
        }
        assert!(spool.entries.iter().all(|e| e.text.is_some()));
        // What a waiting entry costs once sent (the module doc and BENCHMARKS.md say 64).
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
        let (_, first) = spool.next_batch(1000, 1 << 20).unwrap().unwrap();
        assert!(
            spool.entries.iter().all(|e| e.text.is_none()),
            "sent entries hold their texts"
        );
        spool.mark_all_unsent();
        let (_, again) = spool.next_batch(1000, 1 << 20).unwrap().unwrap();
        assert_eq!(again, first, "the resend differs from the first send");
        // Acks make the journal mostly dead lines; a compaction moves every text.
        spool.ack(&[(1, 5)]).unwrap();
        spool.compact().unwrap();
        spool.mark_all_unsent();
        let (_, compacted) = spool.next_batch(1000, 1 << 20).unwrap().unwrap();
        let expected: Vec<String> = (6..=20).map(long).collect();
        assert_eq!(
            compacted,
            format!("{{\"v\":1,\"items\":[{}]}}", expected.join(","))
        );
        // Entries pushed after the compaction sit behind it in the same file.
        spool.push(Kind::Result, long).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1000, 1 << 20).unwrap();
        let (_, reopened) = spool.next_batch(1000, 1 << 20).unwrap().unwrap();
        let expected: Vec<String> = (6..=21).map(long).collect();
        assert_eq!(
            reopened,
            format!("{{\"v\":1,\"items\":[{}]}}", expected.join(","))
        );
    }

    #[test]
    fn bounds_drop_the_oldest_and_count_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3, 1 << 20).unwrap();
        for _ in 0..5 {
            spool.push(Kind::Metrics, item).unwrap();
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.dropped(), 2);
        let (_, payload) = spool.next_batch(10, 1 << 20).unwrap().unwrap();
        assert!(payload.starts_with("{\"v\":1,\"items\":[{\"seq\":3}"));
        drop(spool);
        let spool = Spool::open(dir.path(), 3, 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.dropped()), (3, 2));
    }

    #[test]
    fn batches_hold_one_kind_and_respect_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        spool.push(Kind::Result, item).unwrap();
        spool.push(Kind::Result, item).unwrap();
        spool.push(Kind::Metrics, item).unwrap();
        spool.push(Kind::Result, item).unwrap();
        assert_eq!(
            spool.next_batch(1, 1 << 20).unwrap().unwrap().1,
            "{\"v\":1,\"items\":[{\"seq\":1}]}"
        );
        assert_eq!(
            spool.next_batch(10, 1 << 20).unwrap().unwrap().1,
            "{\"v\":1,\"items\":[{\"seq\":2}]}"
        );
        assert_eq!(
            spool.next_batch(10, 1 << 20).unwrap().unwrap().0,
            Kind::Metrics
        );
        assert_eq!(
            spool.next_batch(10, 1 << 20).unwrap().unwrap().1,
            "{\"v\":1,\"items\":[{\"seq\":4}]}"
        );
    }

    #[test]
    fn sync_is_one_fsync_per_group_and_state_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert!(!spool.is_dirty());
        for _ in 0..3 {
            spool.push(Kind::Result, item).unwrap();
        }
        assert!(spool.is_dirty());
        spool.sync().unwrap();
        assert!(!spool.is_dirty());
        spool.sync().unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.next_seq()), (3, 4));
    }

    #[test]
    fn entries_no_batch_can_carry_are_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 30).unwrap();
        spool.push(Kind::Result, item).unwrap();
        let huge = |seq: u64| {
            format!(
                "{{\"seq\":{seq},\"x\":\"{}\"}}",
                "a".repeat(MAX_ENTRY_BYTES)
            )
        };
        assert!(matches!(
            spool.push(Kind::Result, huge),
            Err(SpoolError::Unsendable { .. })
        ));
        assert_eq!(spool.unsendable(), 1);
        assert_eq!(spool.next_seq(), 2, "a refused entry spends no seq");
        spool.push(Kind::Result, item).unwrap();
        drop(spool);
        // An older journal may hold such an entry: it is dropped and counted at open.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.jsonl"))
            .unwrap();
        writeln!(
            file,
            "{{\"e\":{{\"seq\":3,\"k\":\"r\",\"d\":{}}}}}",
            huge(3)
        )
        .unwrap();
        drop(file);
        let mut spool = Spool::open(dir.path(), 100, 1 << 30).unwrap();
        assert_eq!((spool.len(), spool.unsendable()), (2, 2));
        let (_, payload) = spool.next_batch(10, 1 << 20).unwrap().unwrap();
        assert_eq!(payload, "{\"v\":1,\"items\":[{\"seq\":1},{\"seq\":2}]}");
    }

    #[test]
    fn raise_seq_renumbers_only_the_reused_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        for _ in 0..5 {
            spool.push(Kind::Result, item).unwrap();
        }
        // The store holds seqs up to 9; this life of the state numbered from 3.
        assert_eq!(spool.raise_seq(3, 10).unwrap(), 3);
        assert_eq!(spool.next_seq(), 13);
        let (_, payload) = spool.next_batch(10, 1 << 20).unwrap().unwrap();
        assert_eq!(
            payload,
            "{\"v\":1,\"items\":[{\"seq\":1},{\"seq\":2},{\"seq\":10},{\"seq\":11},{\"seq\":12}]}"
        );
        drop(spool);
        let spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.next_seq()), (5, 13));
    }

    #[test]
    fn a_torn_journal_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        spool.push(Kind::Event, item).unwrap();
        drop(spool);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spool.jsonl"))
            .unwrap();
        write!(file, "{{\"e\":{{\"seq\":2,\"k\"").unwrap();
        drop(file);
        let spool = Spool::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.next_seq()), (1, 2));
    }
}

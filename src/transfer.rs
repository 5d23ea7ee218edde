//! The wire side of slot migration: turning the keys the main thread collected into pipelined
//! commands — one `umcluster.import` per batch (see `ffi::import`), or `RESTORE ... REPLACE
//! ABSTTL` per key for a destination without this module — and sending them to the destination
//! from a background thread, so the source's event loop never waits for the network or for the
//! destination.
//!
//! A [`Link`] is one connection to one destination, with two threads: the writer encodes each
//! [`Batch`] and writes it (any `DUMP` payload of a string is built here, CRC64 included, so the
//! main thread only copies bytes); the reader counts the replies of every batch in order and
//! reports [`Event`]s back. The main thread owns the batches (shared through `Arc`) and decides
//! what an acknowledgement means (see `ffi::mover`); nothing here touches the server. A link that
//! fails in any way reports [`Event::Down`] once and stops; the main thread then drops it and
//! opens a new one later.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crc::{Crc, Table, CRC_64_REDIS};

use crate::resp::{encode_command, itoa};
use crate::topology::setcluster::parse_u64;

/// The checksum `DUMP` payloads end with (Jones CRC-64, as the server computes it).
const CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// RDB version written into the payloads we build. A payload is accepted by every server whose
/// own RDB version is at least this (Redis 6.0 and later); the string encoding has not changed
/// since long before.
const PAYLOAD_RDB_VERSION: u16 = 9;

/// `RDB_TYPE_STRING`.
const RDB_TYPE_STRING: u8 = 0;

/// A key's value as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A string value (sent as itself in an import, as a `DUMP` payload the writer builds when it
    /// looks like an integer or goes by `RESTORE`).
    Str(Bytes),
    /// Any other type, serialized by the server's `DUMP` on the main thread.
    Dump(Vec<u8>),
    /// The key is gone here: remove the destination's copy. A `T` entry of an import; by
    /// `RESTORE`, one whose absolute expiry lies in the past, which the destination answers by
    /// deleting the key (and propagating a `DEL`).
    Tombstone,
    /// Some elements of a big hash, set, sorted set or list (see [`Piece`]); import only.
    Piece(Piece),
}

/// Which collection a [`Piece`] belongs to, and how its elements are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    /// Field, value, field, value...
    Hash,
    /// Members.
    Set,
    /// Member, score, member, score... (the scores as the server prints them, exact).
    Zset,
    /// Elements in order, appended at the tail.
    List,
    /// Entries in order, each its id (`ms-seq`), its field count and its fields and values; the
    /// last piece starts with the stream's last generated id, entries added and largest deleted
    /// id (see [`StreamPiece`]). Only streams without consumer groups move in pieces.
    Stream,
}

impl Collection {
    fn letter(self) -> u8 {
        match self {
            Collection::Hash => b'h',
            Collection::Set => b's',
            Collection::Zset => b'z',
            Collection::List => b'l',
            Collection::Stream => b'x',
        }
    }

    fn from_letter(letter: u8) -> Option<Collection> {
        Some(match letter {
            b'h' => Collection::Hash,
            b's' => Collection::Set,
            b'z' => Collection::Zset,
            b'l' => Collection::List,
            b'x' => Collection::Stream,
            _ => return None,
        })
    }

    /// Elements that make one item (a field and its value, a member and its score).
    pub fn arity(self) -> usize {
        match self {
            Collection::Hash | Collection::Zset => 2,
            Collection::Set | Collection::List | Collection::Stream => 1,
        }
    }
}

/// Part of a collection too big to move as one `DUMP` (it would hold both servers' loops for as
/// long as its serialization and its `RESTORE` take). The destination applies the pieces of a key
/// in order: the `first` replaces whatever the key held, the others add to it, the `last` sets
/// the expiry. Until the last is acknowledged the source keeps the key (fenced), so no client
/// is sent to the partial copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub of: Collection,
    pub first: bool,
    pub last: bool,
    /// The elements, each as a 4-byte little-endian length and its bytes ([`pack_element`]).
    pub elements: Vec<u8>,
}

/// A stream entry's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// `ms-seq`, as the server writes it.
    pub fn parse(text: &[u8]) -> Option<StreamId> {
        let dash = text.iter().position(|&b| b == b'-')?;
        Some(StreamId {
            ms: parse_u64(&text[..dash])?,
            seq: parse_u64(&text[dash + 1..])?,
        })
    }

    pub fn text(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// The smallest id after this one (`None` after the largest).
    pub fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }
}

/// One entry of a stream piece: its id and its fields and values, alternating.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamEntry<'a> {
    pub id: StreamId,
    pub fields: &'a [&'a [u8]],
}

/// A stream piece's elements, read: the stream's state (last generated id, entries added,
/// largest deleted id, as `XSETID` takes them) on the last piece, and the entries in increasing
/// id order.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamPiece<'a> {
    pub state: Option<[&'a [u8]; 3]>,
    pub entries: Vec<StreamEntry<'a>>,
}

/// Reads a stream piece's elements; `None` unless they are exactly what the mover writes
/// (well-formed ids in increasing order, field counts that match, at least one field each).
pub fn read_stream_piece<'a>(elements: &'a [&'a [u8]], last: bool) -> Option<StreamPiece<'a>> {
    let (state, mut rest) = if last {
        let (head, rest) = elements.split_first_chunk::<3>()?;
        StreamId::parse(head[0])?;
        parse_u64(head[1])?;
        StreamId::parse(head[2])?;
        (Some(*head), rest)
    } else {
        (None, elements)
    };
    let mut entries = Vec::new();
    while let [id, count, tail @ ..] = rest {
        let id = StreamId::parse(id)?;
        if entries.last().is_some_and(|e: &StreamEntry| e.id >= id) {
            return None;
        }
        let count = usize::try_from(parse_u64(count)?).ok()?;
        // Checked: a forged count must not overflow.
        let fields = count
            .checked_mul(2)
            .filter(|n| *n > 0 && *n <= tail.len())?;
        entries.push(StreamEntry {
            id,
            fields: &tail[..fields],
        });
        rest = &tail[fields..];
    }
    rest.is_empty().then_some(StreamPiece { state, entries })
}

/// Appends one element to a piece's packed elements.
pub fn pack_element(element: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(element.len() as u32).to_le_bytes());
    out.extend_from_slice(element);
}

/// The elements packed by [`pack_element`]; `None` unless `packed` is exactly a whole number of
/// items of `of` (elements are counted, never trusted).
pub fn unpack_elements(packed: &[u8], of: Collection) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = packed;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    (out.len() % of.arity() == 0).then_some(out)
}

/// One key to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key's name; scanned keys share one buffer per batch (`bytes::BytesMut::split`), so a
    /// key costs no allocation of its own.
    pub key: Bytes,
    pub payload: Payload,
    /// Absolute expiry in Unix milliseconds, 0 for none.
    pub expire_at_ms: i64,
}

impl Entry {
    /// The name's and the value's bytes (what the progress counters report).
    pub fn weight(&self) -> u64 {
        self.key.len() as u64
            + match &self.payload {
                Payload::Str(v) => v.len() as u64,
                Payload::Dump(v) => v.len() as u64,
                Payload::Tombstone => 0,
                Payload::Piece(p) => p.elements.len() as u64,
            }
    }
}

/// Keys of one logical database sent together; acknowledged as a whole.
#[derive(Debug, Default)]
pub struct Batch {
    pub id: u64,
    pub db: i32,
    pub entries: Vec<Entry>,
    /// Key names plus values (what the progress counters report).
    pub bytes: u64,
}

/// What a link reports to the main thread, in batch order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Every key of the batch was restored on the destination.
    Acked(u64),
    /// The destination refused at least one key of the batch (the first error is given). The
    /// link goes on; the main thread decides.
    Refused { id: u64, error: String },
    /// The connection could not be made: nothing was written. No further event comes.
    Unreachable(String),
    /// The connection failed or timed out after it was made; no further event comes.
    Down(String),
}

/// Appends the `DUMP` payload of a string value: type, RDB length-prefixed bytes, RDB version,
/// CRC64 of everything before it.
pub fn string_dump_payload(value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(RDB_TYPE_STRING);
    rdb_len(value.len() as u64, out);
    out.extend_from_slice(value);
    out.extend_from_slice(&PAYLOAD_RDB_VERSION.to_le_bytes());
    let crc = CRC64.checksum(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// RDB length encoding (6-bit, 14-bit, 32-bit or 64-bit big-endian forms).
fn rdb_len(len: u64, out: &mut Vec<u8>) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.push(0x40 | (len >> 8) as u8);
        out.push(len as u8);
    } else if len <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// The destination's command for a batch (see `ffi::import`):
/// `umcluster.import <db> <key> <spec> <value> [<key> <spec> <value> ...]`.
pub const IMPORT_COMMAND: &str = "umcluster.import";

/// The error an import answers when the server refused one of its entries (a `DUMP` payload of
/// a module type the destination lacks, or of a newer RDB version): every entry before entry
/// `n` was applied, none after it. The source reads `n` back with [`refused_entry`], finishes the
/// applied keys and sends the rest again without the refused one.
pub fn refused_entry_error(n: usize, error: &str) -> String {
    format!("ERR {IMPORT_COMMAND}: entry {n} refused: {error}")
}

/// The entry an error of [`refused_entry_error`] names, and the server's own words; `None` for
/// any other error (a refusal of the whole import, or one from an older module).
pub fn refused_entry(error: &str) -> Option<(usize, &str)> {
    let rest = error.strip_prefix("ERR ")?.strip_prefix(IMPORT_COMMAND)?;
    let rest = rest.strip_prefix(": entry ")?;
    let (n, why) = rest.split_once(" refused: ")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n.parse().ok()?, why))
}

/// How a link delivers keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// One `umcluster.import` per batch: a destination running this module.
    #[default]
    Import,
    /// One `RESTORE ... REPLACE ABSTTL` per key: any destination (one without the module
    /// answers `umcluster.import` with "unknown command", and the mover falls back to this).
    Restore,
}

/// What an import entry carries, the first byte of its spec argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportKind {
    /// `S`: the value is the string itself.
    Str,
    /// `D`: the value is a `DUMP` payload (restored as `RESTORE` would).
    Dump,
    /// `T`: delete the key; the value is empty.
    Tombstone,
    /// `P`: a piece of a big collection (`P`, the collection's letter, a digit with bit 0 for
    /// the first piece and bit 1 for the last; the expiry only on the last): the value is the
    /// packed elements.
    Piece {
        of: Collection,
        first: bool,
        last: bool,
    },
}

/// The spec argument of an import entry: the kind's letter(s), then the absolute expiry in Unix
/// milliseconds when there is one (`S`, `S1700000000000`, `D`, `T`, `Ph1`, `Pl2`,
/// `Pz31700000000000`).
pub fn import_spec(kind: ImportKind, expire_at_ms: i64) -> ([u8; 24], usize) {
    let mut out = [0u8; 24];
    let mut len = 1;
    let mut dated = kind != ImportKind::Tombstone;
    out[0] = match kind {
        ImportKind::Str => b'S',
        ImportKind::Dump => b'D',
        ImportKind::Tombstone => b'T',
        ImportKind::Piece { of, first, last } => {
            out[1] = of.letter();
            out[2] = b'0' + u8::from(first) + 2 * u8::from(last);
            len = 3;
            dated = last;
            b'P'
        }
    };
    if expire_at_ms > 0 && dated {
        let (digits, n) = itoa(expire_at_ms);
        out[len..len + n].copy_from_slice(&digits[..n]);
        len += n;
    }
    (out, len)
}

/// Parses a spec written by [`import_spec`]: the kind and the expiry (0 for none). `None` for
/// anything else.
pub fn parse_import_spec(spec: &[u8]) -> Option<(ImportKind, i64)> {
    let (&letter, mut digits) = spec.split_first()?;
    let kind = match letter {
        b'S' => ImportKind::Str,
        b'D' => ImportKind::Dump,
        b'T' => ImportKind::Tombstone,
        b'P' => {
            let [of, phase, rest @ ..] = digits else {
                return None;
            };
            let phase = phase.checked_sub(b'0').filter(|p| *p <= 3)?;
            digits = rest;
            ImportKind::Piece {
                of: Collection::from_letter(*of)?,
                first: phase & 1 != 0,
                last: phase & 2 != 0,
            }
        }
        _ => return None,
    };
    if digits.is_empty() {
        return Some((kind, 0));
    }
    // One spelling per expiry (no leading zeros): what `import_spec` writes, nothing else.
    let dated = match kind {
        ImportKind::Tombstone => false,
        ImportKind::Piece { last, .. } => last,
        _ => true,
    };
    if !dated || digits.len() > 18 || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    (ms > 0).then_some((kind, ms))
}

/// Whether the server would store `value` as an integer (`OBJECT ENCODING` "int"): the
/// canonical decimal form of a 64-bit integer. Such strings travel as `DUMP` payloads, whose
/// `RESTORE` re-encodes them, so a moved counter takes as little memory as it did.
fn integer_like(value: &[u8]) -> bool {
    value.len() <= 20
        && std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|n| {
                let (digits, len) = itoa(n);
                &digits[..len] == value
            })
}

/// Appends the `umcluster.import` command of `batch` to `out`; it produces one reply.
pub fn encode_import(batch: &Batch, out: &mut Vec<u8>) -> usize {
    // Each entry's kind, and the payloads of integer-like strings, decided once; the payloads
    // are built before the argument list so that it can borrow them.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let specs: Vec<([u8; 24], usize)> = batch
        .entries
        .iter()
        .map(|e| {
            let kind = match &e.payload {
                Payload::Str(v) if integer_like(v) => {
                    let mut p = Vec::with_capacity(v.len() + 16);
                    string_dump_payload(v, &mut p);
                    payloads.push(p);
                    ImportKind::Dump
                }
                Payload::Str(_) => ImportKind::Str,
                Payload::Dump(_) => ImportKind::Dump,
                Payload::Tombstone => ImportKind::Tombstone,
                Payload::Piece(p) => ImportKind::Piece {
                    of: p.of,
                    first: p.first,
                    last: p.last,
                },
            };
            import_spec(kind, e.expire_at_ms)
        })
        .collect();
    let (db, db_len) = itoa(i64::from(batch.db));
    let mut args: Vec<&[u8]> = Vec::with_capacity(2 + 3 * batch.entries.len());
    args.push(IMPORT_COMMAND.as_bytes());
    args.push(&db[..db_len]);
    let mut next_payload = payloads.iter();
    for (e, (spec, spec_len)) in batch.entries.iter().zip(&specs) {
        args.push(&e.key);
        args.push(&spec[..*spec_len]);
        args.push(match &e.payload {
            Payload::Str(_) if spec[0] == b'D' => {
                next_payload.next().map_or(&[][..], Vec::as_slice)
            }
            Payload::Str(v) => v,
            Payload::Dump(d) => d,
            Payload::Tombstone => b"",
            Payload::Piece(p) => &p.elements,
        });
    }
    encode_command(out, &args);
    1
}

/// Appends the commands of `batch` to `out` (a `SELECT` first when the database differs from
/// `selected`, which is updated) and returns how many replies they produce.
pub fn encode_batch(batch: &Batch, selected: &mut Option<i32>, out: &mut Vec<u8>) -> usize {
    let mut replies = 0;
    if *selected != Some(batch.db) {
        encode_command(
            out,
            &[b"SELECT".as_slice(), batch.db.to_string().as_bytes()],
        );
        *selected = Some(batch.db);
        replies += 1;
    }
    let mut payload = Vec::new();
    for e in &batch.entries {
        let (data, ttl) = match &e.payload {
            Payload::Piece(_) => {
                // Pieces go only to a destination that took imports (see the mover). Should one
                // come here, it goes as the import it is: a destination without the module
                // refuses it, and nothing is deleted on a refusal.
                let single = Batch {
                    id: batch.id,
                    db: batch.db,
                    entries: vec![e.clone()],
                    bytes: 0,
                };
                replies += encode_import(&single, out);
                continue;
            }
            Payload::Dump(d) => (d.as_slice(), e.expire_at_ms.max(0)),
            Payload::Str(value) => {
                payload.clear();
                string_dump_payload(value, &mut payload);
                (payload.as_slice(), e.expire_at_ms.max(0))
            }
            Payload::Tombstone => {
                payload.clear();
                string_dump_payload(b"", &mut payload);
                // 1 ms after the epoch: long expired.
                (payload.as_slice(), 1)
            }
        };
        let (digits, len) = itoa(ttl);
        encode_command(
            out,
            &[
                b"RESTORE".as_slice(),
                &e.key,
                &digits[..len],
                data,
                b"REPLACE",
                b"ABSTTL",
            ],
        );
        replies += 1;
    }
    replies
}

/// How a link connects: how long a connect, a write, or the wait for an owed reply may take
/// before the link is declared down (a big batch's reply may take longer, see [`reply_wait`]),
/// and the credentials the destination wants.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    /// `AUTH [user] password` sent before anything else, when set.
    pub auth: Option<Credentials>,
    /// Called (on the link's threads) after each event is reported: lets the owner stop waiting.
    pub wake: fn(),
    pub delivery: Delivery,
}

/// A user (`None`: the default user) and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: String,
}

impl Credentials {
    /// `AUTH [user] password` as a RESP command.
    pub fn auth_command(&self) -> Vec<u8> {
        let mut cmd = Vec::new();
        match &self.user {
            Some(user) => encode_command(
                &mut cmd,
                &[
                    b"AUTH".as_slice(),
                    user.as_bytes(),
                    self.password.as_bytes(),
                ],
            ),
            None => encode_command(&mut cmd, &[b"AUTH".as_slice(), self.password.as_bytes()]),
        }
        cmd
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, ***)", self.user)
    }
}

/// The `AUTH` handshake, before any batch is written: an error means nothing was sent, except
/// the one a server without passwords gives (then nothing is needed).
fn authenticate(
    stream: &mut TcpStream,
    auth: &Credentials,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let cmd = auth.auth_command();
    stream.write_all(&cmd).map_err(|e| format!("AUTH: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match std::io::Read::read(stream, &mut byte) {
            Ok(0) => return Err("AUTH: connection closed".into()),
            Ok(_) => line.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) && Instant::now() < deadline => {}
            Err(e) => return Err(format!("AUTH: {e}")),
        }
        if line.len() > 4096 {
            return Err("AUTH: reply too long".into());
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    if text == "+OK" || text.contains("without any password configured") {
        Ok(())
    } else {
        Err(format!("AUTH refused: {}", text.trim_start_matches('-')))
    }
}

/// The link's threads' side of the event channel: every event is followed by the owner's wake-up.
#[derive(Clone)]
struct Reporter {
    events: Sender<Event>,
    wake: fn(),
}

impl Reporter {
    /// Reports `event`; false when the owner is gone (the link was dropped).
    fn send(&self, event: Event) -> bool {
        let sent = self.events.send(event).is_ok();
        if sent {
            (self.wake)();
        }
        sent
    }
}

/// How long the destination may take to answer a batch of `bytes`: the link's reply timeout, plus
/// a second per 10 MB (a destination restores a 100 MB string in well under a second here; a
/// huge hash or sorted set takes longer, and must not read as a dead destination).
pub fn reply_wait(reply_timeout: Duration, bytes: u64) -> Duration {
    reply_timeout + Duration::from_millis(bytes / 10_000)
}

/// One connection to a destination, driven by two threads. Dropping it closes the connection and
/// lets the threads end.
pub struct Link {
    /// Destination address, for messages.
    pub addr: String,
    batches: Option<Sender<Arc<Batch>>>,
    events: Receiver<Event>,
    stream: Arc<Mutex<Option<TcpStream>>>,
}

impl Link {
    /// Starts connecting to `host:port` in the background; batches sent before the connection is
    /// up are written once it is.
    pub fn open(host: &str, port: u16, config: LinkConfig) -> Link {
        let (batch_tx, batch_rx) = mpsc::channel::<Arc<Batch>>();
        let (event_tx, event_rx) = mpsc::channel::<Event>();
        let stream = Arc::new(Mutex::new(None));
        let target = (host.to_string(), port);
        let shared = Arc::clone(&stream);
        let failed = event_tx.clone();
        let reporter = Reporter {
            events: event_tx,
            wake: config.wake,
        };
        let spawned = thread::Builder::new()
            .name("umcluster-migrate-tx".into())
            .spawn(move || writer(target, config, batch_rx, reporter, shared));
        let link = Link {
            addr: format!("{host}:{port}"),
            batches: Some(batch_tx),
            events: event_rx,
            stream,
        };
        if let Err(e) = spawned {
            let _ = failed.send(Event::Unreachable(format!(
                "cannot start the sender thread: {e}"
            )));
        }
        link
    }

    /// Queues a batch for sending. False when the link is already down.
    pub fn send(&self, batch: Arc<Batch>) -> bool {
        self.batches
            .as_ref()
            .is_some_and(|tx| tx.send(batch).is_ok())
    }

    /// The events reported since the last call, in order.
    pub fn poll(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Link({})", self.addr)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Closing the batch channel ends the writer; shutting the socket down ends the reader.
        self.batches = None;
        if let Ok(guard) = self.stream.lock() {
            if let Some(s) = guard.as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Connects to `host:port` (a bare IPv6 address works too: no brackets needed).
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = format!("{host}:{port}");
    let mut last = format!("{addr}: no address");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The writer thread: connects, starts the reader, then writes every batch it is given.
/// Nice steps the link's threads stand below the thread that starts them (the server's main
/// thread). Where they compete for a core, the scheduler then runs the main thread first, so the
/// mover's sending and reading delay the clients' event loop less. The gain is small next to this
/// VM's noise: migration benchmark, 3 M keys, five alternating pairs of the same build with and
/// without it, longest PING 6.1-6.7 ms against 6.8-8.8 ms at the same speed; a later three pairs
/// against the build before it showed no difference (6.0-8.0 against 6.0-7.5 ms).
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`BACKGROUND_NICE`] (on Linux a thread id's nice value
/// is that thread's alone). Advisory: a refusal changes nothing else.
fn yield_to_the_main_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: system calls about this thread's own id. A -1 from `getpriority` is either the
    // real nice value or an error that cannot happen for our own id; either way the result is
    // a valid, lower priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + BACKGROUND_NICE).min(19));
    }
}

fn writer(
    (host, port): (String, u16),
    config: LinkConfig,
    batches: Receiver<Arc<Batch>>,
    events: Reporter,
    shared: Arc<Mutex<Option<TcpStream>>>,
) {
    yield_to_the_main_thread();
    let addr = format!("{host}:{port}");
    let mut stream = match connect(&host, port, config.connect_timeout) {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Unreachable(format!("connect {e}")));
            return;
        }
    };
    let setup = (|| {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(config.reply_timeout))?;
        let read_half = stream.try_clone()?;
        read_half.set_read_timeout(Some(Duration::from_millis(100)))?;
        let keep = stream.try_clone()?;
        Ok::<_, std::io::Error>((read_half, keep))
    })();
    let (read_half, keep) = match setup {
        Ok(pair) => pair,
        Err(e) => {
            let _ = events.send(Event::Down(format!("{addr}: {e}")));
            return;
        }
    };
    match shared.lock() {
        Ok(mut guard) => *guard = Some(keep),
        Err(_) => return,
    }
    if let Some(auth) = &config.auth {
        if let Err(e) = authenticate(&mut stream, auth, config.reply_timeout) {
            let _ = events.send(Event::Unreachable(format!("{addr}: {e}")));
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
    let (owed_tx, owed_rx) = mpsc::channel::<Owed>();
    let reader_events = events.clone();
    let reader_addr = addr.clone();
    // The reader inherits this thread's lowered priority.
    if let Err(e) = thread::Builder::new()
        .name("umcluster-migrate-rx".into())
        .spawn(move || reader(reader_addr, read_half, owed_rx, reader_events))
    {
        let _ = events.send(Event::Down(format!("cannot start the reader thread: {e}")));
        return;
    }

    let mut selected = None;
    let mut buf = Vec::new();
    while let Ok(batch) = batches.recv() {
        buf.clear();
        let replies = match config.delivery {
            Delivery::Import => encode_import(&batch, &mut buf),
            Delivery::Restore => encode_batch(&batch, &mut selected, &mut buf),
        };
        let owed = Owed {
            id: batch.id,
            replies,
            wait: reply_wait(config.reply_timeout, batch.bytes),
            // `RESTORE`s: one reply per entry, after a `SELECT`'s if there is one.
            first_entry_reply: match config.delivery {
                Delivery::Import => None,
                Delivery::Restore => Some(replies.saturating_sub(batch.entries.len())),
            },
        };
        if owed_tx.send(owed).is_err() {
            return; // The reader stopped and has reported why.
        }
        if let Err(e) = stream.write_all(&buf) {
            let _ = events.send(Event::Down(format!("{addr}: write: {e}")));
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
    // The link was dropped: close, so the reader ends too.
    let _ = stream.shutdown(Shutdown::Both);
}

/// What the writer tells the reader about a batch it sent.
struct Owed {
    id: u64,
    /// Replies the batch's commands produce.
    replies: usize,
    /// How long each may take.
    wait: Duration,
    /// When each entry has a reply of its own (`RESTORE`s): the index of the first entry's.
    first_entry_reply: Option<usize>,
}

/// The reader thread: reads the replies owed for each batch, in order (each within the wait the
/// writer gave it, see [`reply_wait`]), and reports each batch. A `RESTORE` refused is reported
/// as the import reports a refused entry ([`refused_entry_error`]): the entries before it were
/// restored (those after it may have been too; they are sent again, and every one replaces).
fn reader(addr: String, stream: TcpStream, owed: Receiver<Owed>, events: Reporter) {
    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        let Owed {
            id,
            replies,
            wait,
            first_entry_reply,
        } = match owed.recv_timeout(Duration::from_secs(1)) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut first_error: Option<String> = None;
        for reply in 0..replies {
            let deadline = Instant::now() + wait;
            line.clear();
            loop {
                match input.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        let _ = events.send(Event::Down(format!("{addr}: connection closed")));
                        return;
                    }
                    Ok(_) if line.ends_with(b"\n") => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if Instant::now() >= deadline {
                            let _ = events.send(Event::Down(format!(
                                "{addr}: no reply within {} ms",
                                wait.as_millis()
                            )));
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = events.send(Event::Down(format!("{addr}: read: {e}")));
                        return;
                    }
                }
            }
            match line.first() {
                Some(b'+') => {}
                Some(b'-') if first_error.is_none() => {
                    let text = String::from_utf8_lossy(&line[1..]);
                    let text = text.trim_end();
                    first_error = Some(match first_entry_reply {
                        Some(first) if reply >= first => refused_entry_error(reply - first, text),
                        _ => text.to_string(),
                    });
                }
                Some(b'-') => {}
                _ => {
                    let _ = events.send(Event::Down(format!(
                        "{addr}: unexpected reply {:?}",
                        String::from_utf8_lossy(&line).trim_end()
                    )));
                    return;
                }
            }
        }
        let event = match first_error {
            None => Event::Acked(id),
            Some(error) => Event::Refused { id, error },
        };
        if !events.send(event) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_entry_is_named_and_read_back_and_nothing_else_reads_as_one() {
        let error = refused_entry_error(17, "ERR Bad data format");
        assert_eq!(
            error,
            "ERR umcluster.import: entry 17 refused: ERR Bad data format"
        );
        assert_eq!(refused_entry(&error), Some((17, "ERR Bad data format")));
        let oom = refused_entry_error(0, "OOM command not allowed");
        assert_eq!(refused_entry(&oom), Some((0, "OOM command not allowed")));
        for other in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "ERR umcluster.import: not a migration source of these slots for this node",
            "ERR umcluster.import: entry  refused: x",
            "ERR umcluster.import: entry -1 refused: x",
            "ERR umcluster.import: entry 99999999999999999999999 refused: x",
            "ERR unknown command 'umcluster.import'",
            "",
        ] {
            assert_eq!(refused_entry(other), None, "{other}");
        }
    }

    #[test]
    fn big_batches_get_longer_to_answer() {
        let base = Duration::from_secs(5);
        assert_eq!(reply_wait(base, 0), base);
        assert_eq!(reply_wait(base, 1 << 20), base + Duration::from_millis(104));
        assert_eq!(
            reply_wait(base, 1_000_000_000),
            base + Duration::from_secs(100)
        );
    }

    #[test]
    fn import_specs_round_trip_and_reject_anything_else() {
        for (kind, ms) in [
            (ImportKind::Str, 0),
            (ImportKind::Str, 1_700_000_000_123),
            (ImportKind::Dump, 0),
            (ImportKind::Dump, 1),
            (ImportKind::Tombstone, 0),
        ]
        .into_iter()
        .chain(
            [
                Collection::Hash,
                Collection::Set,
                Collection::Zset,
                Collection::List,
            ]
            .into_iter()
            .flat_map(|of| {
                [(false, false), (true, false), (false, true), (true, true)]
                    .map(|(first, last)| (ImportKind::Piece { of, first, last }, 0))
            }),
        )
        .chain([(
            ImportKind::Piece {
                of: Collection::Zset,
                first: true,
                last: true,
            },
            1_700_000_000_123,
        )]) {
            let (spec, len) = import_spec(kind, ms);
            assert_eq!(parse_import_spec(&spec[..len]), Some((kind, ms)));
        }
        let middle = ImportKind::Piece {
            of: Collection::Hash,
            first: true,
            last: false,
        };
        assert_eq!(&import_spec(middle, 42).0[..3], b"Ph1");
        assert_eq!(
            import_spec(middle, 42).1,
            3,
            "only the last piece carries the expiry"
        );
        assert_eq!(&import_spec(ImportKind::Str, 42).0[..3], b"S42");
        // A tombstone carries no expiry; a negative or absent expiry is none.
        assert_eq!(import_spec(ImportKind::Tombstone, 5).1, 1);
        assert_eq!(import_spec(ImportKind::Str, -1).1, 1);
        for bad in [
            &b""[..],
            b"X",
            b"s",
            b"S-1",
            b"S0",
            b"S1x",
            b"T5",
            b"S9999999999999999999",
            b"S05",
            b"P",
            b"Ph",
            b"Pq1",
            b"Ph4",
            b"Ph15",
            b"Pl25x",
        ] {
            assert_eq!(parse_import_spec(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn packed_elements_round_trip_and_malformed_ones_are_refused() {
        let mut packed = Vec::new();
        for e in [&b"field"[..], b"", b"\x00\xff value"] {
            pack_element(e, &mut packed);
        }
        assert_eq!(
            unpack_elements(&packed, Collection::List),
            Some(vec![&b"field"[..], b"", b"\x00\xff value"])
        );
        // Three elements are no whole number of field/value pairs.
        assert_eq!(unpack_elements(&packed, Collection::Hash), None);
        assert_eq!(unpack_elements(&[], Collection::Zset), Some(vec![]));
        // Cut short anywhere: refused, never read past the end.
        for cut in 1..packed.len() {
            let got = unpack_elements(&packed[..cut], Collection::List);
            assert!(got.is_none() || cut == 9 || cut == 13, "{cut}: {got:?}");
        }
        assert_eq!(unpack_elements(&[9, 0, 0, 0, 1], Collection::Set), None);
        assert_eq!(unpack_elements(&[0xff; 4], Collection::Set), None);
    }

    #[test]
    fn stream_pieces_are_read_exactly_as_written_or_refused() {
        let el: Vec<&[u8]> = vec![
            b"5-0", b"1", b"f", b"v", b"5-1", b"2", b"a", b"1", b"b", b"",
        ];
        let piece = read_stream_piece(&el, false).expect("a middle piece");
        assert_eq!(piece.state, None);
        assert_eq!(
            piece
                .entries
                .iter()
                .map(|e| (e.id, e.fields.len()))
                .collect::<Vec<_>>(),
            vec![
                (StreamId { ms: 5, seq: 0 }, 2),
                (StreamId { ms: 5, seq: 1 }, 4)
            ]
        );
        let mut last: Vec<&[u8]> = vec![b"9-3", b"12", b"5-2"];
        last.extend_from_slice(&el);
        let piece = read_stream_piece(&last, true).expect("a last piece");
        assert_eq!(piece.state, Some([&b"9-3"[..], b"12", b"5-2"]));
        assert_eq!(piece.entries.len(), 2);
        assert!(
            read_stream_piece(&[b"0-0", b"0", b"0-0"], true).is_some_and(|p| p.entries.is_empty())
        );
        for bad in [
            vec![&b"5-0"[..], b"1", b"f"], // a field without its value
            vec![b"5-0", b"0"],            // no fields
            vec![b"5-1", b"1", b"f", b"v", b"5-1", b"1", b"f", b"v"], // ids not increasing
            vec![b"5", b"1", b"f", b"v"],  // not an id
            vec![b"5-x", b"1", b"f", b"v"],
            vec![b"-5-1", b"1", b"f", b"v"],
            vec![b"5-0", b"one", b"f", b"v"],
            vec![b"5-0"],
            vec![b"5-0", b"9223372036854775808", b"f", b"v"], // a count that doubles past usize
        ] {
            assert_eq!(read_stream_piece(&bad, false), None, "{bad:?}");
        }
        // A last piece needs its three state fields, well formed.
        assert_eq!(read_stream_piece(&el, true), None);
        assert_eq!(read_stream_piece(&[b"9-3", b"x", b"5-2"], true), None);
    }

    #[test]
    fn stream_ids_parse_print_and_step() {
        let id = StreamId::parse(b"1700000000000-7").unwrap();
        assert_eq!(id.text(), "1700000000000-7");
        assert_eq!(
            id.next(),
            Some(StreamId {
                ms: 1_700_000_000_000,
                seq: 8
            })
        );
        let top = StreamId {
            ms: 3,
            seq: u64::MAX,
        };
        assert_eq!(top.next(), Some(StreamId { ms: 4, seq: 0 }));
        assert_eq!(
            StreamId {
                ms: u64::MAX,
                seq: u64::MAX
            }
            .next(),
            None
        );
        for bad in [
            &b""[..],
            b"5",
            b"5-",
            b"-5",
            b"5-1-2",
            b"a-1",
            b"18446744073709551616-0",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_canonical_integers_count_as_integers() {
        for yes in [
            &b"0"[..],
            b"7",
            b"-7",
            b"9223372036854775807",
            b"-9223372036854775808",
        ] {
            assert!(integer_like(yes), "{yes:?}");
        }
        for no in [
            &b""[..],
            b"007",
            b"+5",
            b"-0",
            b" 5",
            b"5 ",
            b"9223372036854775808",
            b"1e3",
            b"abc",
        ] {
            assert!(!integer_like(no), "{no:?}");
        }
    }

    #[test]
    fn an_import_carries_every_entry_in_one_command() {
        let batch = Batch {
            id: 1,
            db: 3,
            entries: vec![
                Entry {
                    key: b"s".to_vec().into(),
                    payload: Payload::Str(b"hello".to_vec().into()),
                    expire_at_ms: 0,
                },
                Entry {
                    key: b"n".to_vec().into(),
                    payload: Payload::Str(b"42".to_vec().into()),
                    expire_at_ms: 99,
                },
                Entry {
                    key: b"d".to_vec().into(),
                    payload: Payload::Dump(b"\x0e...".to_vec()),
                    expire_at_ms: 0,
                },
                Entry {
                    key: b"t".to_vec().into(),
                    payload: Payload::Tombstone,
                    expire_at_ms: 0,
                },
            ],
            bytes: 0,
        };
        let mut out = Vec::new();
        assert_eq!(encode_import(&batch, &mut out), 1);
        let mut forty_two = Vec::new();
        string_dump_payload(b"42", &mut forty_two);
        let mut expected = Vec::new();
        encode_command(
            &mut expected,
            &[
                &b"umcluster.import"[..],
                b"3",
                b"s",
                b"S",
                b"hello",
                b"n",
                b"D99",
                &forty_two,
                b"d",
                b"D",
                b"\x0e...",
                b"t",
                b"T",
                b"",
            ],
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn string_payload_matches_the_servers_dump() {
        // `DUMP` of "hello" from redis-server 7.0 (RDB version 10).
        let server = b"\x00\x05hello\x0a\x00cr\xdfve4 \x0a";
        let mut body = vec![RDB_TYPE_STRING];
        rdb_len(5, &mut body);
        body.extend_from_slice(b"hello");
        body.extend_from_slice(&10u16.to_le_bytes());
        assert_eq!(&body[..], &server[..server.len() - 8]);
        let crc = CRC64.checksum(&body).to_le_bytes();
        assert_eq!(&crc, &server[server.len() - 8..]);
    }

    #[test]
    fn string_payload_layout() {
        let mut out = Vec::new();
        string_dump_payload(b"abc", &mut out);
        assert_eq!(&out[..5], b"\x00\x03abc");
        assert_eq!(&out[5..7], &PAYLOAD_RDB_VERSION.to_le_bytes());
        assert_eq!(out.len(), 5 + 2 + 8);
        let crc = CRC64.checksum(&out[..7]).to_le_bytes();
        assert_eq!(&out[7..], &crc);
    }

    #[test]
    fn rdb_lengths_use_the_shortest_form() {
        let enc = |n: u64| {
            let mut v = Vec::new();
            rdb_len(n, &mut v);
            v
        };
        assert_eq!(enc(0), vec![0]);
        assert_eq!(enc(63), vec![63]);
        assert_eq!(enc(64), vec![0x40, 64]);
        assert_eq!(enc(16383), vec![0x7f, 0xff]);
        assert_eq!(enc(16384), vec![0x80, 0, 0, 0x40, 0]);
        assert_eq!(enc(1 << 32), vec![0x81, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn batches_select_their_database_once() {
        let batch = |db| Batch {
            id: 1,
            db,
            entries: vec![Entry {
                key: b"k".to_vec().into(),
                payload: Payload::Dump(b"P".to_vec()),
                expire_at_ms: 0,
            }],
            bytes: 2,
        };
        let mut selected = None;
        let mut out = Vec::new();
        assert_eq!(encode_batch(&batch(3), &mut selected, &mut out), 2);
        assert!(out.starts_with(b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"));
        assert!(out.ends_with(
            b"*6\r\n$7\r\nRESTORE\r\n$1\r\nk\r\n$1\r\n0\r\n$1\r\nP\r\n$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n"
        ));
        out.clear();
        assert_eq!(encode_batch(&batch(3), &mut selected, &mut out), 1);
        assert!(out.starts_with(b"*6\r\n$7\r\nRESTORE"));
        assert_eq!(encode_batch(&batch(0), &mut selected, &mut out), 2);
    }

    #[test]
    fn a_link_reaches_a_bare_ipv6_address_and_matches_replies_to_batches() {
        use std::io::Read;
        // Not every sandbox has IPv6 loopback: nothing to check then.
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let link = Link::open(
            "::1",
            port,
            LinkConfig {
                connect_timeout: Duration::from_secs(2),
                reply_timeout: Duration::from_secs(2),
                auth: None,
                wake: || {},
                delivery: Delivery::Restore,
            },
        );
        let batch = Batch {
            id: 7,
            db: 0,
            entries: vec![Entry {
                key: b"k".to_vec().into(),
                payload: Payload::Str(b"v".to_vec().into()),
                expire_at_ms: 0,
            }],
            bytes: 2,
        };
        assert!(link.send(Arc::new(batch)));
        let (mut peer, _) = listener.accept().unwrap();
        // SELECT 0 and one RESTORE: two commands, two replies.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.windows(6).filter(|w| w == b"ABSTTL").count() < 1 {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "link closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"*2\r\n$6\r\nSELECT\r\n"));
        peer.write_all(b"+OK\r\n+OK\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = link.poll().into_iter().next() {
                assert_eq!(e, Event::Acked(7));
                break;
            }
            assert!(Instant::now() < deadline, "no acknowledgement");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_link_to_a_closed_port_reports_down() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let link = Link::open(
            "127.0.0.1",
            port,
            LinkConfig {
                connect_timeout: Duration::from_millis(200),
                reply_timeout: Duration::from_millis(200),
                auth: None,
                wake: || {},
                delivery: Delivery::Restore,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = link.poll();
            if let Some(e) = events.first() {
                assert!(matches!(e, Event::Unreachable(_)), "{e:?}");
                break;
            }
            assert!(Instant::now() < deadline, "no event");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

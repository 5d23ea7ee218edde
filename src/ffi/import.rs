//! `umcluster.import <db> <key> <spec> <value> ...`: the destination side of slot migration.
//!
//! The source's mover sends one of these per batch (see `transfer::encode_import` for the wire
//! form) instead of a `RESTORE` per key: the destination then parses, looks up, checks and
//! answers one command per batch rather than per key, and a string travels as itself rather than
//! as a checksummed `DUMP` payload. Integer-like strings and other types still come as payloads
//! and are restored by the server's `RESTORE` (so they get the server's own encodings).
//!
//! Who may send it: over a client connection, only the host the topology names as the source of
//! every key's importing slot (as for the mover's `RESTORE`s); the whole batch is refused before
//! anything is applied otherwise. From the master or the AOF it is applied as it stands, never
//! checked or redirected, so a replica replays exactly what its master did.
//!
//! Pieces of big collections (`P` entries, see `transfer::Piece`) are applied with the
//! collection's own command (a stream's entries with their ids, its state with `XSETID`); the
//! first piece of a key replaces whatever it held, the last sets its expiry.
//!
//! Expiry: a key whose absolute expiry has passed when a master applies it is deleted instead
//! (as `RESTORE ... ABSTTL` does), and the command is propagated with that entry turned into a
//! tombstone, so replicas, whose clocks may differ, delete it too.

use std::os::raw::c_int;

use redis_module::raw;

use super::client::Caller;
use super::filter::importing_from_caller;
use super::{call, guard, rm, string_bytes};
use crate::resp::{itoa, Value};
use crate::router::SlotRoute;
use crate::slot::key_slot;
use crate::state::{self, State};
use crate::transfer::{
    parse_import_spec, read_stream_piece, refused_entry_error, unpack_elements, Collection,
    ImportKind, IMPORT_COMMAND,
};

/// Flags of `umcluster.import`: a write (refused on a read-only replica and under OOM like
/// `RESTORE`), not from scripts.
pub const IMPORT_FLAGS: &str = "write deny-oom deny-script";

/// One parsed entry: indexes into argv and what its spec says.
struct Entry {
    key: usize,
    kind: ImportKind,
    expire_at_ms: i64,
    value: usize,
}

pub(super) extern "C" fn import_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let reply = guard(
        "umcluster.import",
        // SAFETY: arguments as the server passed them, on the main thread.
        || unsafe { import(ctx, argv, argc.max(0) as usize) },
        |msg| Err(msg.replace('\n', " ")),
    );
    // SAFETY: `ctx` is this command's context.
    unsafe {
        match reply {
            Ok(()) => rm!(RedisModule_ReplyWithSimpleString)(ctx, c"OK".as_ptr()),
            Err(text) => {
                let line = std::ffi::CString::new(text.replace('\0', " "))
                    .unwrap_or_else(|_| c"ERR umcluster.import failed".into());
                rm!(RedisModule_ReplyWithError)(ctx, line.as_ptr())
            }
        }
    };
    raw::REDISMODULE_OK as c_int
}

/// Parses the arguments: the database and the entries. Nothing is applied here.
unsafe fn parse(args: &[*mut raw::RedisModuleString]) -> Result<(i32, Vec<Entry>), String> {
    if args.len() < 2 || (args.len() - 2) % 3 != 0 {
        return Err("ERR wrong number of arguments for 'umcluster.import' command".into());
    }
    let mut buf = [0u8; 24];
    let db = std::str::from_utf8(string_bytes(args[1], &mut buf))
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .filter(|db| *db >= 0)
        .ok_or("ERR umcluster.import: invalid database")?;
    let mut entries = Vec::with_capacity((args.len() - 2) / 3);
    for first in (2..args.len()).step_by(3) {
        let (kind, expire_at_ms) = parse_import_spec(string_bytes(args[first + 1], &mut buf))
            .ok_or("ERR umcluster.import: invalid entry spec")?;
        if let ImportKind::Piece { of, last, .. } = kind {
            let elements = unpack_elements(string_bytes(args[first + 2], &mut buf), of)
                .ok_or("ERR umcluster.import: invalid piece")?;
            if of == Collection::Stream && read_stream_piece(&elements, last).is_none() {
                return Err("ERR umcluster.import: invalid stream piece".into());
            }
        }
        entries.push(Entry {
            key: first,
            kind,
            expire_at_ms,
            value: first + 2,
        });
    }
    Ok((db, entries))
}

/// Over a client connection: every key must be in a slot this node imports from the caller's
/// host.
unsafe fn authorized(
    st: &State,
    caller: Caller,
    args: &[*mut raw::RedisModuleString],
    entries: &[Entry],
) -> bool {
    // The importing ranges whose source is the caller's host, looked up once for the batch.
    let mut ranges = Vec::new();
    importing_from_caller(st, caller, |r| {
        ranges.push(*r);
        false
    });
    let mut buf = [0u8; 24];
    entries.iter().all(|e| {
        let slot = key_slot(string_bytes(args[e.key], &mut buf));
        matches!(st.table.get(slot), SlotRoute::Importing { .. })
            && ranges.iter().any(|r| r.start <= slot && slot <= r.end)
    })
}

unsafe fn import(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: usize,
) -> Result<(), String> {
    let args = std::slice::from_raw_parts(argv, argc);
    let (db, entries) = parse(args)?;
    let flags = rm!(RedisModule_GetContextFlags)(ctx) as u32;
    let obey =
        flags & (raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING) != 0;
    if !obey {
        // The command's own client (a master's link or the AOF would have set a flag above).
        let caller = Caller::Client {
            id: rm!(RedisModule_GetClientId)(ctx),
            flags: 0,
        };
        let allowed = state::try_with(|st| authorized(st, caller, args, &entries)).unwrap_or(false);
        if !allowed {
            return Err(
                "ERR umcluster.import: not a migration source of these slots for this node".into(),
            );
        }
    }
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    if rm!(RedisModule_SelectDb)(ctx, db) != raw::REDISMODULE_OK as c_int {
        return Err("ERR umcluster.import: DB index is out of range".into());
    }
    let now_ms = rm!(RedisModule_Milliseconds)();
    // RESTORE's fixed arguments, made once for the batch's payloads.
    let replace = rm!(RedisModule_CreateString)(ctx, c"REPLACE".as_ptr(), 7);
    let absttl = rm!(RedisModule_CreateString)(ctx, c"ABSTTL".as_ptr(), 6);
    // Entries a master deleted because they expired on the way (propagated as tombstones).
    let mut expired: Vec<usize> = Vec::new();
    // The entry the server refused, if any: it and the ones after it are not applied.
    let mut refused: Option<(usize, String)> = None;
    for (n, e) in entries.iter().enumerate() {
        let name = args[e.key];
        let past = !obey && e.expire_at_ms > 0 && e.expire_at_ms <= now_ms;
        let kind = if past {
            expired.push(n);
            ImportKind::Tombstone
        } else {
            e.kind
        };
        match kind {
            ImportKind::Str => {
                let key = rm!(RedisModule_OpenKey)(
                    ctx,
                    name,
                    (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int,
                );
                rm!(RedisModule_StringSet)(key, args[e.value]);
                if e.expire_at_ms > 0 {
                    rm!(RedisModule_SetAbsExpire)(key, e.expire_at_ms);
                }
                rm!(RedisModule_CloseKey)(key);
                notify(ctx, name, c"restore");
            }
            ImportKind::Dump => {
                let (digits, len) = itoa(e.expire_at_ms.max(0));
                let ttl = rm!(RedisModule_CreateString)(ctx, digits.as_ptr().cast(), len);
                let mut argv = [name, ttl, args[e.value], replace, absttl];
                let reply = call::call_strings(ctx, c"RESTORE", &mut argv, c"vE");
                rm!(RedisModule_FreeString)(ctx, ttl);
                if let Ok(Value::Error(text)) | Err(text) = reply {
                    refused = Some((n, text));
                    break;
                }
            }
            ImportKind::Piece { of, first, last } => {
                if let Err(text) = apply_piece(ctx, name, args[e.value], of, first, last) {
                    refused = Some((n, text));
                    break;
                }
                if last && e.expire_at_ms > 0 {
                    let key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_WRITE as c_int);
                    rm!(RedisModule_SetAbsExpire)(key, e.expire_at_ms);
                    rm!(RedisModule_CloseKey)(key);
                }
            }
            ImportKind::Tombstone => {
                let key = rm!(RedisModule_OpenKey)(
                    ctx,
                    name,
                    (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int,
                );
                let existed =
                    rm!(RedisModule_KeyType)(key) != raw::REDISMODULE_KEYTYPE_EMPTY as c_int;
                rm!(RedisModule_UnlinkKey)(key);
                rm!(RedisModule_CloseKey)(key);
                if existed {
                    notify(ctx, name, c"del");
                }
            }
        }
    }
    rm!(RedisModule_FreeString)(ctx, replace);
    rm!(RedisModule_FreeString)(ctx, absttl);
    // What came before a refused entry is applied, and propagated; the error names the entry, so
    // the source finishes the keys before it and sends the ones after it again (a source that
    // cannot read the index sends the whole batch again, which is harmless: every entry replaces).
    let applied = refused.as_ref().map_or(entries.len(), |(n, _)| *n);
    propagate(ctx, args, &entries[..applied], &expired);
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    refused.map_or(Ok(()), |(n, text)| Err(refused_entry_error(n, &text)))
}

/// Applies a piece of a big collection (see `transfer::Piece`): the first replaces what the key
/// held, every piece adds its elements with the collection's own command (`HSET`, `SADD`, `ZADD`,
/// `RPUSH`: the server's encodings, notifications and `WATCH` invalidation, as for any write).
/// The import is propagated as a whole, so these calls are not.
unsafe fn apply_piece(
    ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    packed: *mut raw::RedisModuleString,
    of: Collection,
    first: bool,
    last: bool,
) -> Result<(), String> {
    if first {
        let key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_WRITE as c_int);
        let existed = rm!(RedisModule_KeyType)(key) != raw::REDISMODULE_KEYTYPE_EMPTY as c_int;
        // A big value is freed by the server's lazy-free thread, not on this loop.
        rm!(RedisModule_UnlinkKey)(key);
        rm!(RedisModule_CloseKey)(key);
        if existed {
            notify(ctx, name, c"del");
        }
    }
    let mut buf = [0u8; 24];
    // Checked when the command was parsed.
    let elements = unpack_elements(string_bytes(packed, &mut buf), of)
        .ok_or("ERR umcluster.import: invalid piece")?;
    let command = match of {
        Collection::Stream => return apply_stream_piece(ctx, name, &elements, last),
        Collection::Hash => c"HSET",
        Collection::Set => c"SADD",
        Collection::Zset => c"ZADD",
        Collection::List => c"RPUSH",
    };
    if elements.is_empty() {
        return Ok(());
    }
    let mut argv = Vec::with_capacity(1 + elements.len());
    argv.push(name);
    let mut add = |bytes: &[u8]| {
        argv.push(rm!(RedisModule_CreateString)(
            ctx,
            bytes.as_ptr().cast(),
            bytes.len(),
        ))
    };
    match of {
        // Pieces carry member, score; `ZADD` takes score, member.
        Collection::Zset => elements.chunks_exact(2).for_each(|pair| {
            add(pair[1]);
            add(pair[0]);
        }),
        _ => elements.iter().for_each(|e| add(e)),
    }
    let reply = call::call_strings(ctx, command, &mut argv, c"vE");
    for s in &argv[1..] {
        rm!(RedisModule_FreeString)(ctx, *s);
    }
    match reply {
        Ok(Value::Error(text)) | Err(text) => Err(text),
        Ok(_) => Ok(()),
    }
}

/// A stream's piece: its entries added with their ids (`RedisModule_StreamAdd`), and on the last
/// piece the stream's state set as the source had it (`XSETID ... ENTRIESADDED ... MAXDELETEDID`),
/// so that new ids, `XINFO` and consumer groups created later see the same stream.
unsafe fn apply_stream_piece(
    ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    elements: &[&[u8]],
    last: bool,
) -> Result<(), String> {
    // Checked when the command was parsed.
    let piece =
        read_stream_piece(elements, last).ok_or("ERR umcluster.import: invalid stream piece")?;
    if !piece.entries.is_empty() {
        let key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_WRITE as c_int);
        let mut refused = None;
        for entry in &piece.entries {
            let mut argv: Vec<_> = entry
                .fields
                .iter()
                .map(|f| rm!(RedisModule_CreateString)(ctx, f.as_ptr().cast(), f.len()))
                .collect();
            let mut id = raw::RedisModuleStreamID {
                ms: entry.id.ms,
                seq: entry.id.seq,
            };
            let added = rm!(RedisModule_StreamAdd)(
                key,
                0,
                &mut id,
                argv.as_mut_ptr(),
                (argv.len() / 2) as i64,
            );
            for s in argv {
                rm!(RedisModule_FreeString)(ctx, s);
            }
            if added != raw::REDISMODULE_OK as c_int {
                refused = Some(format!(
                    "ERR umcluster.import: stream entry {} refused: {}",
                    entry.id.text(),
                    std::io::Error::last_os_error()
                ));
                break;
            }
        }
        rm!(RedisModule_CloseKey)(key);
        if let Some(text) = refused {
            return Err(text);
        }
        notify(ctx, name, c"xadd");
    }
    if let Some([last_id, added, max_deleted]) = piece.state {
        // Once per stream: `call` copies its arguments, the key's name included.
        let mut key_name = [0u8; 24];
        let key = string_bytes(name, &mut key_name).to_vec();
        let reply = call::call(
            ctx,
            "XSETID",
            &[
                &key,
                last_id,
                b"ENTRIESADDED",
                added,
                b"MAXDELETEDID",
                max_deleted,
            ],
        );
        if let Ok(Value::Error(text)) | Err(text) = reply {
            return Err(text);
        }
    }
    Ok(())
}

/// What `RESTORE` and `DEL` tell the rest of the server about a key.
unsafe fn notify(
    ctx: *mut raw::RedisModuleCtx,
    name: *mut raw::RedisModuleString,
    event: &std::ffi::CStr,
) {
    rm!(RedisModule_SignalModifiedKey)(ctx, name);
    rm!(RedisModule_NotifyKeyspaceEvent)(
        ctx,
        raw::REDISMODULE_NOTIFY_GENERIC as c_int,
        event.as_ptr(),
        name,
    );
}

/// Propagates the entries applied (`applied`, a prefix of the command's), as they were sent, or
/// with the ones in `expired` turned into tombstones.
unsafe fn propagate(
    ctx: *mut raw::RedisModuleCtx,
    args: &[*mut raw::RedisModuleString],
    applied: &[Entry],
    expired: &[usize],
) {
    if applied.is_empty() {
        return;
    }
    let whole = 2 + 3 * applied.len() == args.len();
    if whole && expired.is_empty() {
        rm!(RedisModule_ReplicateVerbatim)(ctx);
        return;
    }
    let tombstone = rm!(RedisModule_CreateString)(ctx, c"T".as_ptr(), 1);
    let empty = rm!(RedisModule_CreateString)(ctx, c"".as_ptr(), 0);
    let mut out: Vec<*mut raw::RedisModuleString> = Vec::with_capacity(1 + 3 * applied.len());
    out.push(args[1]);
    for (n, e) in applied.iter().enumerate() {
        out.push(args[e.key]);
        if expired.binary_search(&n).is_ok() {
            out.push(tombstone);
            out.push(empty);
        } else {
            out.push(args[e.key + 1]);
            out.push(args[e.value]);
        }
    }
    // The command's own name, as registered (`IMPORT_COMMAND`).
    let command = std::ffi::CString::new(IMPORT_COMMAND).unwrap_or_default();
    rm!(RedisModule_Replicate)(
        ctx,
        command.as_ptr(),
        c"v".as_ptr(),
        out.as_mut_ptr(),
        out.len(),
    );
    rm!(RedisModule_FreeString)(ctx, tombstone);
    rm!(RedisModule_FreeString)(ctx, empty);
}

//! Cached redirect replies (`MOVED`, `ASK`): a redirect answered with no formatting and no
//! allocation.
//!
//! On 7.0 the only way for a module to reply an error, `RedisModule_ReplyWithError`, formats the
//! line with printf: about 2,700 instructions, more than the whole `GET` it answers for. A reply
//! obtained through `RedisModule_Call` keeps its protocol bytes and its list of errors, and
//! `RedisModule_ReplyWithCallReply` copies the bytes to the client and hands it the errors, so
//! the server counts the error exactly as it would have (`errorstat_MOVED`, the command's
//! `failed_calls`). So for each slot answered with a redirect, the module keeps:
//! - the error line as a server string, which the filter hands to `umcluster.redirect` by
//!   reference (retained, not copied), and
//! - the reply `umcluster.redirect` gives for that line, made once through `RedisModule_Call`.
//!
//! One line per slot is enough: within one routing table version a slot's redirect is fixed by
//! its route (`MOVED` to the owner of a remote or importing slot, `ASK` to the destination of a
//! migrating one). `umcluster.redirect` knows a cached line by its address (a client cannot pass
//! that string) and replies the cached reply. The first line cached after the table changed
//! drops the previous version's lines and replies. At most one line and one reply per slot
//! (about 300 bytes each), so at most about 5 MB while a client keeps asking this node for every
//! slot it does not serve.
//!
//! The filter's quick path answers a command whose keys start at its first argument by renaming
//! it to `u.r` instead (see `filter::rename_to_quick_redirect`) and hands that command its slot
//! ([`hand_over`]); `u.r` replies the same cached reply.
//!
//! Main thread only, like the state: the filter and the module's commands run there (or on a
//! thread holding the server lock, while the main thread waits).

use std::cell::{Cell, UnsafeCell};

use redis_module::raw;

use super::filter::REDIRECT_COMMAND;
use super::{new_string, rm};
use crate::slot::SLOT_COUNT;
use crate::state::MainThread;

/// One slot's cached redirect: the line (`MOVED <slot> <host:port>` or `ASK ...`) and, once
/// made, the reply.
#[derive(Clone, Copy)]
struct Entry {
    line: *mut raw::RedisModuleString,
    reply: *mut raw::RedisModuleCallReply,
    /// What the line says, parsed once (`None` for a line that is not a redirect).
    said: Option<Cached>,
}

const EMPTY: Entry = Entry {
    line: std::ptr::null_mut(),
    reply: std::ptr::null_mut(),
    said: None,
};

struct Cache {
    /// The routing table version the entries belong to.
    version: u64,
    /// `SLOT_COUNT` entries once a line was cached, else none.
    slots: Vec<Entry>,
    /// The name of the redirect command as a server string, made once.
    command: *mut raw::RedisModuleString,
}

static CACHE: MainThread<UnsafeCell<Cache>> = MainThread(UnsafeCell::new(Cache {
    version: 0,
    slots: Vec::new(),
    command: std::ptr::null_mut(),
}));

/// The slot of the command the filter has just renamed to `u.r`, and whose command it is.
#[derive(Clone, Copy)]
struct Handed {
    /// The client struct (`server.current_client`), null when nothing is handed over.
    client: *const u64,
    slot: u16,
}

static HANDED: MainThread<Cell<Handed>> = MainThread(Cell::new(Handed {
    client: std::ptr::null(),
    slot: 0,
}));

/// Called by the filter as it renames `client`'s command to `u.r`: the command's slot, so that
/// `u.r` need not hash its key again. Only the command that runs next for that client takes it
/// ([`take_handed`]): the server runs a renamed command right after the filters, unless it
/// rejects it (then a later `u.r` of that client must be sent as such, and the filter forgets
/// the slot on seeing one: [`forget_handed`]) or holds it back (`CLIENT PAUSE`: it runs again
/// through the filters, which forget the slot; other clients' redirects may replace it
/// meanwhile). A script's call or another module's `RedisModule_Call` runs as a client other
/// than `server.current_client`, so it never takes a slot.
///
/// # Safety
/// Main thread.
#[inline(always)]
pub unsafe fn hand_over(client: *const u64, slot: u16) {
    HANDED.0.set(Handed { client, slot });
}

/// The slot handed over for `client`'s command ([`hand_over`]), taken.
///
/// # Safety
/// Main thread.
#[inline(always)]
pub unsafe fn take_handed(client: *const u64) -> Option<u16> {
    let handed = HANDED.0.get();
    if handed.client.is_null() || handed.client != client {
        return None;
    }
    forget_handed();
    Some(handed.slot)
}

/// Drops a slot handed over ([`hand_over`]).
///
/// # Safety
/// Main thread.
pub unsafe fn forget_handed() {
    HANDED.0.set(Handed {
        client: std::ptr::null(),
        slot: 0,
    });
}

/// The cached line of `slot` for table `version`, if one was made.
///
/// # Safety
/// Main thread; no other function of this file is running.
#[inline(always)]
pub unsafe fn line(slot: u16, version: u64) -> Option<*mut raw::RedisModuleString> {
    cached_entry(slot, version).map(|entry| entry.line)
}

/// The entry of `slot` in table `version`, if it holds a line.
///
/// # Safety
/// As [`line`].
#[inline(always)]
unsafe fn cached_entry<'a>(slot: u16, version: u64) -> Option<&'a Entry> {
    let cache = &*CACHE.0.get();
    if cache.version != version {
        return None;
    }
    let entry = cache.slots.get(slot as usize)?;
    (!entry.line.is_null()).then_some(entry)
}

/// The cached line of `slot` for table `version`, made from `text` if there is none yet, or if
/// the one there says something else (and the previous version's entries dropped). `text` is
/// the redirect line of that slot in that version. `None` only for a slot number out of range.
///
/// # Safety
/// Main thread; no other function of this file is running.
pub unsafe fn line_or_make(
    slot: u16,
    version: u64,
    text: &[u8],
) -> Option<*mut raw::RedisModuleString> {
    if let Some(line) = line(slot, version) {
        // One redirect per slot and version (see the file comment); checked all the same, on
        // this slow path only, so a mistake there costs a new line instead of a wrong reply.
        let mut len = 0;
        let bytes = rm!(RedisModule_StringPtrLen)(line, &mut len);
        if std::slice::from_raw_parts(bytes.cast::<u8>(), len) == text {
            return Some(line);
        }
    }
    let cache = &mut *CACHE.0.get();
    if cache.version != version || cache.slots.is_empty() {
        drop_entries(cache);
        cache.version = version;
        cache.slots = vec![EMPTY; SLOT_COUNT];
    }
    let entry = cache.slots.get_mut(slot as usize)?;
    release(entry);
    entry.line = new_string(text);
    entry.said = parse_line(text).filter(|said| said.slot == slot);
    Some(entry.line)
}

/// The redirect cached for `slot` in table `version`, if there is one (what
/// `u.r`, the quick redirect command, replies).
///
/// # Safety
/// Main thread; no other function of this file is running.
pub unsafe fn cached_for(slot: u16, version: u64) -> Option<Cached> {
    cached_entry(slot, version)?.said
}

/// `umcluster.redirect` as a server string.
///
/// # Safety
/// Main thread; no other function of this file is running.
pub unsafe fn command_name() -> *mut raw::RedisModuleString {
    let cache = &mut *CACHE.0.get();
    if cache.command.is_null() {
        cache.command = new_string(REDIRECT_COMMAND.as_bytes());
    }
    cache.command
}

/// A cached line as `umcluster.redirect` received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    pub slot: u16,
    /// `ASK` rather than `MOVED`.
    pub ask: bool,
}

/// Which slot's cached line `arg` is (`text` being its bytes), if it is one.
///
/// # Safety
/// Main thread; no other function of this file is running.
pub unsafe fn cached(arg: *const raw::RedisModuleString, text: &[u8]) -> Option<Cached> {
    let found = parse_line(text)?;
    let cache = &*CACHE.0.get();
    let entry = cache.slots.get(found.slot as usize)?;
    (std::ptr::eq(entry.line, arg)).then_some(found)
}

/// The kind and slot number of a line `MOVED <slot> ...` or `ASK <slot> ...` (up to 5 digits,
/// no sign).
fn parse_line(text: &[u8]) -> Option<Cached> {
    let (digits, ask) = match text.strip_prefix(b"MOVED ") {
        Some(rest) => (rest, false),
        None => (text.strip_prefix(b"ASK ")?, true),
    };
    let slot = slot_number(digits)?;
    Some(Cached { slot, ask })
}

/// The number before the first space of `digits` (1 to 5 decimal digits).
fn slot_number(digits: &[u8]) -> Option<u16> {
    let mut slot = 0u32;
    for (i, &b) in digits.iter().enumerate().take(6) {
        match b {
            b'0'..=b'9' if i < 5 => slot = slot * 10 + u32::from(b - b'0'),
            b' ' if i > 0 => return u16::try_from(slot).ok(),
            _ => return None,
        }
    }
    None
}

/// The reply for the cached line of `slot` (see [`cached`]), made on first use by running
/// `umcluster.redirect` with a copy of the line through `RedisModule_Call` on `call_ctx`, a
/// context that outlives the reply (its reply keeps a pointer to it). `None` if that failed.
///
/// # Safety
/// Main thread; no other function of this file is running; `call_ctx` a valid context.
#[inline]
pub unsafe fn reply(
    slot: u16,
    call_ctx: *mut raw::RedisModuleCtx,
) -> Option<*mut raw::RedisModuleCallReply> {
    let entry = {
        let cache = &*CACHE.0.get();
        cache.slots.get(slot as usize).copied()?
    };
    if !entry.reply.is_null() {
        return Some(entry.reply);
    }
    make_reply(slot, entry, call_ctx)
}

/// [`reply`] the first time: makes the slot's reply.
#[cold]
#[inline(never)]
unsafe fn make_reply(
    slot: u16,
    entry: Entry,
    call_ctx: *mut raw::RedisModuleCtx,
) -> Option<*mut raw::RedisModuleCallReply> {
    if entry.line.is_null() || call_ctx.is_null() {
        return None;
    }
    let mut len = 0;
    let bytes = rm!(RedisModule_StringPtrLen)(entry.line, &mut len);
    // A copy, not the line itself: the nested call must take the formatting path, not this one.
    // No reference into the cache is held across the call (it re-enters `cached`).
    let name = std::ffi::CString::new(REDIRECT_COMMAND).ok()?;
    let made = rm!(RedisModule_Call)(call_ctx, name.as_ptr(), c"b".as_ptr(), bytes, len);
    if made.is_null() {
        return None;
    }
    if rm!(RedisModule_CallReplyType)(made) != raw::REDISMODULE_REPLY_ERROR as i32 {
        rm!(RedisModule_FreeCallReply)(made);
        return None;
    }
    let cache = &mut *CACHE.0.get();
    match cache.slots.get_mut(slot as usize) {
        Some(e) if std::ptr::eq(e.line, entry.line) => {
            e.reply = made;
            Some(made)
        }
        // The entries changed under the call (cannot happen: nothing in it routes a command).
        _ => {
            rm!(RedisModule_FreeCallReply)(made);
            None
        }
    }
}

/// Frees every cached line and reply, and the command name (module unload).
///
/// # Safety
/// Main thread; no other function of this file is running.
pub unsafe fn clear() {
    let cache = &mut *CACHE.0.get();
    drop_entries(cache);
    cache.slots = Vec::new();
    if !cache.command.is_null() {
        rm!(RedisModule_FreeString)(std::ptr::null_mut(), cache.command);
        cache.command = std::ptr::null_mut();
    }
}

/// Releases every entry.
unsafe fn drop_entries(cache: &mut Cache) {
    for entry in cache.slots.iter_mut() {
        release(entry);
    }
}

/// Releases an entry's line (a command still holding it keeps it alive) and reply.
unsafe fn release(entry: &mut Entry) {
    if !entry.line.is_null() {
        rm!(RedisModule_FreeString)(std::ptr::null_mut(), entry.line);
    }
    if !entry.reply.is_null() {
        rm!(RedisModule_FreeCallReply)(entry.reply);
    }
    *entry = EMPTY;
}

#[cfg(test)]
mod tests {
    use super::{parse_line, Cached};

    #[test]
    fn parse_line_reads_the_kind_and_slot_of_a_redirect_line_only() {
        let moved = |slot| Some(Cached { slot, ask: false });
        let ask = |slot| Some(Cached { slot, ask: true });
        assert_eq!(parse_line(b"MOVED 3999 127.0.0.1:7002"), moved(3999));
        assert_eq!(parse_line(b"MOVED 0 [::1]:7002"), moved(0));
        assert_eq!(parse_line(b"MOVED 16383 h:1"), moved(16383));
        assert_eq!(parse_line(b"ASK 12182 h:1"), ask(12182));
        assert_eq!(parse_line(b"MOVED 99999 h:1"), None);
        for bad in [
            &b"MOVED  1 h:1"[..],
            b"MOVED 1",
            b"MOVED 123456 h:1",
            b"MOVED -1 h:1",
            b"ASK",
            b"ASKING 1 h:1",
            b"moved 1 h:1",
            b"TRYAGAIN Multiple keys request during rehashing of slot",
            b"",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

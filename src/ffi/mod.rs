//! The only place the module talks to the server's C API.
//!
//! Everything the server calls into (the command filter, module commands, server events, the INFO
//! callback) enters through a function in this folder, wrapped in [`guard`] so that a panic turns
//! into an error reply or a log line instead of unwinding into C. Every `unsafe` block says why
//! it is sound; the rest of the crate is plain Rust.

pub mod alloc;
pub mod call;
pub mod client;
pub mod commands;
pub mod events;
pub mod filter;
pub mod import;
pub mod info;
pub mod module;
pub mod mover;
pub mod redirect_cache;
pub mod reply;
pub mod slot_count;

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

/// Calls a server API function through the pointer `RedisModule_Init` filled in.
///
/// The module refuses to load when a function it uses is missing (see `module::REQUIRED_API`), so
/// the `expect` only fires if that list is incomplete; inside [`guard`] even that is a clean error.
macro_rules! rm {
    ($name:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: reading a function pointer that RedisModule_Init filled in and never changes.
        let f = match unsafe { redis_module::raw::$name } {
            Some(f) => f,
            None => panic!(concat!(
                "server API ",
                stringify!($name),
                " is not available"
            )),
        };
        f
    }};
}
pub(crate) use rm;

/// Runs `body`, turning a panic into `fallback()`. Used by every entry point called from C.
///
/// Inlined, with the panic handling out of line: on the happy path `catch_unwind` costs nothing
/// (the unwind tables do the work only when a panic happens), so the command filter pays no call
/// and no frame for it.
#[inline(always)]
pub fn guard<T>(what: &str, body: impl FnOnce() -> T, fallback: impl FnOnce(String) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => fallback(panic_message(what, payload)),
    }
}

/// Logs a caught panic and returns the message for the fallback.
#[cold]
#[inline(never)]
fn panic_message(what: &str, payload: Box<dyn std::any::Any + Send>) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let text = format!("umcluster: internal error in {what}: {msg}");
    log_warning(&text);
    text
}

/// A detached thread-safe context the module makes at load and frees at unload, for server calls
/// made where the server passes no context (the command filter, one-shot events).
pub struct DetachedContext(std::sync::atomic::AtomicPtr<raw::RedisModuleCtx>);

impl Default for DetachedContext {
    fn default() -> DetachedContext {
        DetachedContext::new()
    }
}

impl DetachedContext {
    pub const fn new() -> DetachedContext {
        DetachedContext(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
    }

    /// Makes the context (module load, `ctx` the load context).
    ///
    /// # Safety
    /// `ctx` is a valid module context.
    pub unsafe fn make(&self, ctx: *mut raw::RedisModuleCtx) {
        let made = rm!(RedisModule_GetDetachedThreadSafeContext)(ctx);
        self.0.store(made, std::sync::atomic::Ordering::Relaxed);
    }

    /// The context, null before load or after unload.
    pub fn get(&self) -> *mut raw::RedisModuleCtx {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Frees the context (module unload).
    pub fn free(&self) {
        let ctx = self
            .0
            .swap(std::ptr::null_mut(), std::sync::atomic::Ordering::Relaxed);
        if !ctx.is_null() {
            // SAFETY: made by `make`, freed once (swapped out).
            unsafe { rm!(RedisModule_FreeThreadSafeContext)(ctx) };
        }
    }
}

/// Writes a line to the server log at `warning` level.
pub fn log_warning(msg: &str) {
    log("warning", msg);
}

/// Writes a line to the server log at `notice` level.
pub fn log_notice(msg: &str) {
    log("notice", msg);
}

fn log(level: &str, msg: &str) {
    // SAFETY: RedisModule_Log with a NULL context logs under the module-less prefix; the format
    // string is a constant "%s" so the message cannot inject format directives.
    unsafe {
        if let Some(log) = raw::RedisModule_Log {
            let level = CString::new(level).unwrap_or_default();
            let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
            log(
                std::ptr::null_mut(),
                level.as_ptr(),
                c"%s".as_ptr(),
                msg.as_ptr(),
            );
        }
    }
}

/// The bytes of a server string.
///
/// Command arguments are normally plain strings, but a module may pass integer-encoded objects
/// through `RedisModule_Call` (its `l` format), whose payload is the number itself, not a pointer:
/// `RedisModule_StringPtrLen` would read it as a pointer. Those are rendered into `buf`.
///
/// # Safety
/// `s` must be a live `RedisModuleString` (a `robj` of type string).
#[inline]
pub unsafe fn string_bytes(s: *const raw::RedisModuleString, buf: &mut [u8; 24]) -> &[u8] {
    if s.is_null() {
        return &[];
    }
    // robj header: `unsigned type:4, encoding:4` in the first byte (stable since redis 2.x).
    const OBJ_ENCODING_INT: u8 = 1;
    let header = std::ptr::read(s as *const u8);
    if header >> 4 == OBJ_ENCODING_INT {
        // The value lives in the `ptr` field, after the 4-byte bitfield word and 4-byte refcount.
        let value = std::ptr::read((s as *const u8).add(8) as *const i64);
        let (digits, len) = crate::resp::itoa(value);
        buf[..len].copy_from_slice(&digits[..len]);
        return &buf[..len];
    }
    let mut len = 0usize;
    let ptr = rm!(RedisModule_StringPtrLen)(s, &mut len);
    if ptr.is_null() {
        return &[];
    }
    std::slice::from_raw_parts(ptr as *const u8, len)
}

/// Whether [`plain_string_bytes`] may read string lengths from the server's layout; cleared at
/// load by [`verify_string_layout`] if this server's strings do not look as expected.
static SDS_INLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Checks, at load, that reading strings the way [`plain_string_bytes`] does gives what
/// `RedisModule_StringPtrLen` gives, for every sds header size; if not, turns the inline read off
/// (the API is used instead: slower, never wrong). Returns whether the inline read stays on.
///
/// # Safety
/// `ctx` must be a valid module context on the main thread.
pub unsafe fn verify_string_layout(ctx: *mut raw::RedisModuleCtx) -> bool {
    let mut ok = true;
    for len in [
        0usize, 1, 20, 31, 32, 44, 45, 255, 256, 300, 65535, 65536, 70_000,
    ] {
        let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let s = rm!(RedisModule_CreateString)(ctx, text.as_ptr().cast(), text.len());
        if s.is_null() {
            ok = false;
            break;
        }
        let mut api_len = 0usize;
        let api_ptr = rm!(RedisModule_StringPtrLen)(s, &mut api_len);
        let inline = plain_string_bytes(s);
        ok &= inline.is_some_and(|b| b.as_ptr() == api_ptr.cast() && b.len() == api_len)
            && api_len == len;
        rm!(RedisModule_FreeString)(ctx, s);
        if !ok {
            break;
        }
    }
    if !ok {
        SDS_INLINE.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    ok
}

/// The bytes of a server string that is not integer-encoded; `None` for an integer-encoded one
/// (see [`string_bytes`]). The filter's fast path uses this to avoid a digit buffer per argument.
///
/// # Safety
/// `s` must be a live `RedisModuleString` (a `robj` of type string); the slice lives as long as it.
#[inline]
pub unsafe fn plain_string_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    if SDS_INLINE.load(std::sync::atomic::Ordering::Relaxed) {
        inline_string_bytes(s)
    } else {
        api_string_bytes(s)
    }
}

/// Whether [`inline_string_bytes`] may be used (the load-time layout check passed).
#[inline]
pub fn inline_strings() -> bool {
    SDS_INLINE.load(std::sync::atomic::Ordering::Relaxed)
}

/// [`plain_string_bytes`] once the layout check passed: the length read from the sds header.
///
/// # Safety
/// As [`plain_string_bytes`], and [`inline_strings`] must be true.
#[inline(always)]
pub unsafe fn inline_string_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    if s.is_null() {
        return Some(&[]);
    }
    // sdshdr8 first: every embedded string (arguments up to 44 bytes) uses it.
    if let Some(bytes) = sds8_bytes(s) {
        return Some(bytes);
    }
    if std::ptr::read(s as *const u8) & 0x7f == 0 {
        let sds = std::ptr::read((s as *const u8).add(8) as *const *const u8);
        if !sds.is_null() {
            if let Some(len) = other_sds_len(sds, std::ptr::read(sds.sub(1))) {
                return Some(std::slice::from_raw_parts(sds, len));
            }
        }
    }
    api_string_bytes(s)
}

/// The bytes of a plain string with a one-byte sds header (every string up to 255 bytes),
/// read from the server's layout; `None` for anything else (an integer-encoded string, a
/// longer one, null).
///
/// The robj's first byte holds `type` (low 4 bits, OBJ_STRING = 0) and `encoding` (high 4 bits,
/// RAW = 0 or EMBSTR = 8): exactly the headers with the low 7 bits clear. Reading the length
/// from the sds header instead of calling `RedisModule_StringPtrLen` saves a call per argument,
/// a large share of the filter's budget. The layouts are those of sds.h since redis 3.2
/// (unchanged through 8.x): the byte before the buffer holds the type in its low 3 bits; the
/// packed header before it starts with the length.
///
/// # Safety
/// `s` must be null or a live `RedisModuleString`, and [`inline_strings`] must be true.
#[inline(always)]
pub unsafe fn sds8_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    if s.is_null() || std::ptr::read(s as *const u8) & 0x7f != 0 {
        return None;
    }
    let sds = std::ptr::read((s as *const u8).add(8) as *const *const u8);
    if sds.is_null() || std::ptr::read(sds.sub(1)) & 7 != 1 {
        return None;
    }
    Some(std::slice::from_raw_parts(
        sds,
        std::ptr::read(sds.sub(3)) as usize,
    ))
}

/// The length of an sds string whose header is not an `sdshdr8`.
///
/// # Safety
/// `sds` must be a live sds string whose type byte is `flags`.
#[inline(never)]
unsafe fn other_sds_len(sds: *const u8, flags: u8) -> Option<usize> {
    match flags & 7 {
        0 => Some((flags >> 3) as usize),
        1 => Some(std::ptr::read(sds.sub(3)) as usize),
        2 => Some(std::ptr::read_unaligned(sds.sub(5) as *const u16) as usize),
        3 => Some(std::ptr::read_unaligned(sds.sub(9) as *const u32) as usize),
        4 => Some(std::ptr::read_unaligned(sds.sub(17) as *const u64) as usize),
        _ => None,
    }
}

/// [`plain_string_bytes`] through `RedisModule_StringPtrLen`.
#[inline(never)]
unsafe fn api_string_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    if s.is_null() {
        return Some(&[]);
    }
    const OBJ_ENCODING_INT: u8 = 1;
    if std::ptr::read(s as *const u8) >> 4 == OBJ_ENCODING_INT {
        return None;
    }
    let mut len = 0usize;
    let ptr = rm!(RedisModule_StringPtrLen)(s, &mut len);
    if ptr.is_null() {
        return Some(&[]);
    }
    Some(std::slice::from_raw_parts(ptr as *const u8, len))
}

/// The value of an integer-encoded server string, `None` for any other encoding.
///
/// # Safety
/// `s` must be a live `RedisModuleString`.
#[inline]
pub unsafe fn int_encoded_value(s: *const raw::RedisModuleString) -> Option<i64> {
    const OBJ_ENCODING_INT: u8 = 1;
    if s.is_null() || std::ptr::read(s as *const u8) >> 4 != OBJ_ENCODING_INT {
        return None;
    }
    Some(std::ptr::read((s as *const u8).add(8) as *const i64))
}

/// Creates a server string owned by nobody yet (for the filter to hand to the server).
pub fn new_string(bytes: &[u8]) -> *mut raw::RedisModuleString {
    // SAFETY: a NULL context creates a string outside automatic memory management.
    unsafe {
        rm!(RedisModule_CreateString)(std::ptr::null_mut(), bytes.as_ptr().cast(), bytes.len())
    }
}

/// The credentials this node uses towards its peers (the migration mover, `PUBLISH` forwarding):
/// those its replicas use towards a master, `masteruser` and `masterauth`, which in a cluster whose
/// nodes share credentials are every peer's. None when `masterauth` is not set.
///
/// # Safety
/// `ctx` is a valid module context on the main thread.
pub unsafe fn peer_credentials(
    ctx: *mut raw::RedisModuleCtx,
) -> Option<crate::transfer::Credentials> {
    let get = |name: &[u8]| match call::call(ctx, "CONFIG", &[b"GET", name]) {
        Ok(crate::resp::Value::Array(items)) => items
            .get(1)
            .and_then(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    let password = get(b"masterauth")?;
    Some(crate::transfer::Credentials {
        user: get(b"masteruser"),
        password,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    #[test]
    fn guard_turns_a_panic_into_the_fallback_and_releases_borrows() {
        let cell = RefCell::new(5);
        let out = super::guard(
            "a test",
            || {
                let mut v = cell.borrow_mut();
                *v += 1;
                if *v > 0 {
                    panic!("boom {}", *v);
                }
                0
            },
            |msg| {
                assert!(msg.contains("internal error in a test: boom 6"), "{msg}");
                -1
            },
        );
        assert_eq!(out, -1);
        // The unwind dropped the borrow: the cell is usable again.
        assert_eq!(*cell.try_borrow_mut().expect("borrow released"), 6);
        assert_eq!(super::guard("ok", || 3, |_| -1), 3);
    }

    #[test]
    fn itoa_renders_integers() {
        for v in [0i64, 7, -7, 10000, i64::MIN, i64::MAX] {
            let (buf, len) = crate::resp::itoa(v);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), v.to_string());
        }
    }
}

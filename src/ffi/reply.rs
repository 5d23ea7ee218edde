//! Writes a [`Reply`] value to the client of a module command.

use std::ffi::CString;

use redis_module::raw;

use super::rm;
use crate::reply::Reply;

/// Writes `reply` as the reply of the command running in `ctx`.
///
/// # Safety
/// `ctx` must be the context of a module command that has not replied yet.
pub unsafe fn send(ctx: *mut raw::RedisModuleCtx, reply: &Reply) {
    match reply {
        Reply::Ok => {
            rm!(RedisModule_ReplyWithSimpleString)(ctx, c"OK".as_ptr());
        }
        Reply::Simple(s) => {
            let s = CString::new(s.replace(['\r', '\n', '\0'], " ")).unwrap_or_default();
            rm!(RedisModule_ReplyWithSimpleString)(ctx, s.as_ptr());
        }
        Reply::Error(e) => {
            let e =
                CString::new(e.replace(['\r', '\n'], " ").replace('\0', " ")).unwrap_or_default();
            rm!(RedisModule_ReplyWithError)(ctx, e.as_ptr());
        }
        Reply::Int(i) => {
            rm!(RedisModule_ReplyWithLongLong)(ctx, *i);
        }
        Reply::Bulk(b) => {
            rm!(RedisModule_ReplyWithStringBuffer)(ctx, b.as_ptr().cast(), b.len());
        }
        Reply::Verbatim(text) => {
            rm!(RedisModule_ReplyWithVerbatimString)(ctx, text.as_ptr().cast(), text.len());
        }
        Reply::Null => {
            rm!(RedisModule_ReplyWithNull)(ctx);
        }
        Reply::Array(items) => {
            rm!(RedisModule_ReplyWithArray)(ctx, items.len() as _);
            for item in items {
                send(ctx, item);
            }
        }
        Reply::Map(pairs) => {
            rm!(RedisModule_ReplyWithMap)(ctx, pairs.len() as _);
            for (k, v) in pairs {
                send(ctx, k);
                send(ctx, v);
            }
        }
    }
}

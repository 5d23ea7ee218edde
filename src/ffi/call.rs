//! `RedisModule_Call`: runs a server command from inside the module and returns its reply as a
//! plain [`Value`].
//!
//! The module's own calls never pass through its command filter (it is registered with
//! `REDISMODULE_CMDFILTER_NOSELF`), so they are never redirected.

use std::ffi::CString;

use redis_module::raw;

use super::rm;
use crate::resp::Value;

/// Runs `command args...` and returns its reply. A server error comes back as `Value::Error`;
/// `Err` means the call could not be made at all.
///
/// # Safety
/// `ctx` must be a valid module context for the current thread.
pub unsafe fn call(
    ctx: *mut raw::RedisModuleCtx,
    command: &str,
    args: &[&[u8]],
) -> Result<Value, String> {
    // "v": arguments as an array of strings; "E": errors come back as replies, not as NULL.
    call_with(ctx, command, args, c"vE")
}

/// Like [`call`], with `RedisModule_Call` format flags of the caller's choice (they must include
/// `v` and `E`): `C` checks the calling user's ACL, `!` replicates the command.
///
/// # Safety
/// `ctx` must be a valid module context for the current thread.
pub unsafe fn call_with(
    ctx: *mut raw::RedisModuleCtx,
    command: &str,
    args: &[&[u8]],
    format: &std::ffi::CStr,
) -> Result<Value, String> {
    let name = CString::new(command).map_err(|_| "command name contains NUL".to_string())?;
    let mut argv: Vec<*mut raw::RedisModuleString> = args
        .iter()
        .map(|a| rm!(RedisModule_CreateString)(ctx, a.as_ptr().cast(), a.len()))
        .collect();
    let reply = call_strings(ctx, &name, &mut argv, format);
    for s in argv {
        rm!(RedisModule_FreeString)(ctx, s);
    }
    reply
}

/// Like [`call_with`], with arguments the caller holds as server strings already: nothing is
/// copied, whatever their size.
///
/// # Safety
/// `ctx` must be a valid module context for the current thread, and `argv` valid strings.
pub unsafe fn call_strings(
    ctx: *mut raw::RedisModuleCtx,
    command: &std::ffi::CStr,
    argv: &mut [*mut raw::RedisModuleString],
    format: &std::ffi::CStr,
) -> Result<Value, String> {
    let reply = rm!(RedisModule_Call)(
        ctx,
        command.as_ptr(),
        format.as_ptr(),
        argv.as_mut_ptr(),
        argv.len(),
    );
    if reply.is_null() {
        let errno = std::io::Error::last_os_error();
        return Err(format!(
            "{} could not be called: {errno}",
            command.to_string_lossy()
        ));
    }
    let value = to_value(reply, 0);
    rm!(RedisModule_FreeCallReply)(reply);
    Ok(value)
}

unsafe fn reply_bytes(reply: *mut raw::RedisModuleCallReply) -> Vec<u8> {
    let mut len = 0usize;
    let ptr = rm!(RedisModule_CallReplyStringPtr)(reply, &mut len);
    if ptr.is_null() {
        Vec::new()
    } else {
        std::slice::from_raw_parts(ptr as *const u8, len).to_vec()
    }
}

unsafe fn to_value(reply: *mut raw::RedisModuleCallReply, depth: usize) -> Value {
    if reply.is_null() || depth > 32 {
        return Value::Nil;
    }
    match rm!(RedisModule_CallReplyType)(reply) as isize {
        raw::REDISMODULE_REPLY_STRING
        | raw::REDISMODULE_REPLY_VERBATIM_STRING
        | raw::REDISMODULE_REPLY_BIG_NUMBER => Value::Bulk(reply_bytes(reply)),
        raw::REDISMODULE_REPLY_ERROR => {
            Value::Error(String::from_utf8_lossy(&reply_bytes(reply)).into_owned())
        }
        raw::REDISMODULE_REPLY_INTEGER => Value::Int(rm!(RedisModule_CallReplyInteger)(reply)),
        raw::REDISMODULE_REPLY_ARRAY | raw::REDISMODULE_REPLY_SET => {
            let n = rm!(RedisModule_CallReplyLength)(reply);
            Value::Array(
                (0..n)
                    .map(|i| to_value(rm!(RedisModule_CallReplyArrayElement)(reply, i), depth + 1))
                    .collect(),
            )
        }
        raw::REDISMODULE_REPLY_MAP => {
            let n = rm!(RedisModule_CallReplyLength)(reply);
            let mut pairs = Vec::with_capacity(n);
            for i in 0..n {
                let mut k = std::ptr::null_mut();
                let mut v = std::ptr::null_mut();
                rm!(RedisModule_CallReplyMapElement)(reply, i, &mut k, &mut v);
                pairs.push((to_value(k, depth + 1), to_value(v, depth + 1)));
            }
            Value::Map(pairs)
        }
        raw::REDISMODULE_REPLY_BOOL => Value::Bool(rm!(RedisModule_CallReplyBool)(reply) != 0),
        raw::REDISMODULE_REPLY_DOUBLE => Value::Double(rm!(RedisModule_CallReplyDouble)(reply)),
        _ => Value::Nil,
    }
}

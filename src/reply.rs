//! Replies of the module's commands, as plain values.
//!
//! Command handlers build a [`Reply`]; the FFI layer writes it to the client. Keeping replies as
//! values lets the `CLUSTER` and `UMCTL` formats be unit-tested byte for byte without a server.

/// One reply value.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`
    Ok,
    Simple(String),
    /// An error line without the leading `-`; the first word is the error code (`ERR`, `MOVED`...).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// Text the server sends as a verbatim string (`txt`), like `CLUSTER NODES` and `CLUSTER INFO`;
    /// a bulk string over RESP2.
    Verbatim(String),
    Null,
    Array(Vec<Reply>),
    /// A map over RESP3, a flat array of key, value, key, value ... over RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }

    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }
}

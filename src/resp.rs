//! RESP values, and the encoder/decoder the admin tool (and the module's own outgoing connections)
//! speak.
//!
//! ```text
//! *2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n      <- a command, always an array of bulk strings
//! +OK\r\n  -ERR ...\r\n  :1\r\n  $-1\r\n  *-1\r\n  (RESP2 replies)
//! _\r\n  ,1.5\r\n  #t\r\n  %1\r\n  ~1\r\n  =...  (RESP3 replies, decoded too)
//! ```
//!
//! The same [`Value`] type holds replies read from `RedisModule_Call`, so the parsers of server
//! output (such as the `COMMAND` table) are plain Rust, testable without a server.

use std::fmt;

/// One RESP value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Array(Vec<Value>),
    /// RESP3 map, kept as pairs in order.
    Map(Vec<(Value, Value)>),
    Double(f64),
    Bool(bool),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// A bulk or simple string as UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Looks up `key` in a RESP3 map, or in a RESP2 array of alternating keys and values
    /// (how maps look over RESP2).
    pub fn field(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            Value::Array(items) if items.len() % 2 == 0 => items
                .chunks(2)
                .find(|pair| pair[0].as_str() == Some(key))
                .map(|pair| &pair[1]),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => write!(f, "(nil)"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bulk(b) => write!(f, "{}", String::from_utf8_lossy(b)),
            Value::Simple(s) => write!(f, "{s}"),
            Value::Error(e) => write!(f, "(error) {e}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Value::Map(pairs) => {
                write!(f, "{{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// `value` in decimal, in a stack buffer (text and length): integer arguments and replies are
/// formatted on hot paths where an allocation per number would show.
pub fn itoa(value: i64) -> ([u8; 24], usize) {
    let mut out = [0u8; 24];
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut i = 0;
    loop {
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    if value < 0 {
        out[0] = b'-';
        len = 1;
    }
    for d in digits[..i].iter().rev() {
        out[len] = *d;
        len += 1;
    }
    (out, len)
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Why bytes could not be decoded as RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not RESP.
    Invalid(String),
}

/// Longest bulk string or aggregate the decoder accepts (512 MB, Redis's own proto-max-bulk-len).
const MAX_LEN: i64 = 512 * 1024 * 1024;
/// Deepest nesting the decoder accepts; deeper input is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Decodes one value from the start of `buf`: the value and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut pos = 0;
    let value = decode_at(buf, &mut pos, 0)?;
    Ok((value, pos))
}

fn decode_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Invalid("nesting too deep".into()));
    }
    let line = read_line(buf, pos)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| DecodeError::Invalid("empty line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Value::Simple(text())),
        b'-' => Ok(Value::Error(text())),
        b':' => Ok(Value::Int(parse_int(rest)?)),
        b'_' => Ok(Value::Nil),
        b'#' => match rest {
            b"t" => Ok(Value::Bool(true)),
            b"f" => Ok(Value::Bool(false)),
            _ => Err(DecodeError::Invalid("bad boolean".into())),
        },
        b',' => text()
            .parse::<f64>()
            .map(Value::Double)
            .map_err(|_| DecodeError::Invalid("bad double".into())),
        b'(' => Ok(Value::Bulk(rest.to_vec())),
        b'$' | b'=' | b'!' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            if len > MAX_LEN {
                return Err(DecodeError::Invalid("bulk too long".into()));
            }
            let len = len as usize;
            let end = pos.checked_add(len).ok_or(DecodeError::Incomplete)?;
            if buf.len() < end + 2 {
                return Err(DecodeError::Incomplete);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(DecodeError::Invalid("bulk not terminated by CRLF".into()));
            }
            let data = buf[*pos..end].to_vec();
            *pos = end + 2;
            match kind {
                b'!' => Ok(Value::Error(String::from_utf8_lossy(&data).into_owned())),
                // Verbatim string: a 3-letter format and ':' precede the text ("txt:...").
                b'=' if data.len() >= 4 && data[3] == b':' => Ok(Value::Bulk(data[4..].to_vec())),
                _ => Ok(Value::Bulk(data)),
            }
        }
        b'*' | b'~' | b'>' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            if len > MAX_LEN {
                return Err(DecodeError::Invalid("array too long".into()));
            }
            // Each element takes at least 3 bytes: never reserve more than the input can hold.
            let mut items = Vec::with_capacity((len as usize).min(buf.len() / 3 + 1));
            for _ in 0..len {
                items.push(decode_at(buf, pos, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        b'%' | b'|' => {
            let len = parse_int(rest)?;
            if !(0..=MAX_LEN).contains(&len) {
                return Err(DecodeError::Invalid("bad map length".into()));
            }
            let mut pairs = Vec::with_capacity((len as usize).min(buf.len() / 6 + 1));
            for _ in 0..len {
                let k = decode_at(buf, pos, depth + 1)?;
                let v = decode_at(buf, pos, depth + 1)?;
                pairs.push((k, v));
            }
            if kind == b'|' {
                // An attribute precedes the real reply; keep the reply.
                return decode_at(buf, pos, depth + 1);
            }
            Ok(Value::Map(pairs))
        }
        other => Err(DecodeError::Invalid(format!(
            "unknown type byte 0x{other:02x}"
        ))),
    }
}

fn read_line<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], DecodeError> {
    let start = *pos;
    let rest = buf.get(start..).ok_or(DecodeError::Incomplete)?;
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(n) => {
            *pos = start + n + 2;
            Ok(&rest[..n])
        }
        None => Err(DecodeError::Incomplete),
    }
}

fn parse_int(bytes: &[u8]) -> Result<i64, DecodeError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| DecodeError::Invalid("bad integer".into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn itoa_writes_every_i64() {
        for v in [0i64, 7, -7, 1_700_000_000_123, i64::MAX, i64::MIN] {
            let (buf, len) = super::itoa(v);
            assert_eq!(&buf[..len], v.to_string().as_bytes());
        }
    }

    use super::*;

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &["GET", "foo"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n");
    }

    #[test]
    fn decodes_resp2_and_resp3_values() {
        let (v, n) = decode(b"*3\r\n+OK\r\n:-5\r\n$3\r\nabc\r\nrest").unwrap();
        assert_eq!(n, 23);
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Simple("OK".into()),
                Value::Int(-5),
                Value::Bulk(b"abc".to_vec())
            ])
        );
        assert_eq!(decode(b"$-1\r\n").unwrap().0, Value::Nil);
        assert_eq!(
            decode(b"-ERR x\r\n").unwrap().0,
            Value::Error("ERR x".into())
        );
        let (m, _) = decode(b"%1\r\n+a\r\n#t\r\n").unwrap();
        assert_eq!(m.field("a"), Some(&Value::Bool(true)));
        assert_eq!(decode(b",1.5\r\n").unwrap().0, Value::Double(1.5));
        assert_eq!(
            decode(b"=7\r\ntxt:a b\r\n").unwrap().0,
            Value::Bulk(b"a b".to_vec())
        );
    }

    #[test]
    fn reports_incomplete_and_invalid_input() {
        assert_eq!(decode(b"$5\r\nab"), Err(DecodeError::Incomplete));
        assert_eq!(decode(b"*2\r\n:1\r\n"), Err(DecodeError::Incomplete));
        assert!(matches!(decode(b"?x\r\n"), Err(DecodeError::Invalid(_))));
        assert!(matches!(
            decode(b"$3\r\nabcXY"),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(decode(b":abc\r\n"), Err(DecodeError::Invalid(_))));
        // A huge declared length must not allocate up front.
        assert_eq!(decode(b"*536870912\r\n"), Err(DecodeError::Incomplete));
        let deep = "*1\r\n".repeat(100);
        assert!(matches!(
            decode(deep.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn field_reads_resp2_flat_maps() {
        let v = Value::Array(vec![Value::Bulk(b"k".to_vec()), Value::Int(1)]);
        assert_eq!(v.field("k"), Some(&Value::Int(1)));
        assert_eq!(v.field("x"), None);
    }
}

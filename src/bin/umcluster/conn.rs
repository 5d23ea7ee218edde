//! A small blocking RESP connection to one node, with timeouts.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use umcluster::addr::Addr;
use umcluster::resp::{decode, encode_command, DecodeError, Value};

/// How long to wait to connect, and for each reply.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one node.
pub struct Conn {
    pub addr: Addr,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`, authenticating with `UMCLUSTER_PASSWORD` (and `UMCLUSTER_USER`) when set.
    pub fn open(addr: &Addr) -> Result<Conn, String> {
        let target = (addr.host.as_str(), addr.port)
            .to_socket_addrs()
            .map_err(|e| format!("{addr}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address to connect to"))?;
        let stream = TcpStream::connect_timeout(&target, TIMEOUT)
            .map_err(|e| format!("{addr}: cannot connect: {e}"))?;
        stream.set_read_timeout(Some(TIMEOUT)).ok();
        stream.set_write_timeout(Some(TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            addr: addr.clone(),
            stream,
            buf: Vec::new(),
        };
        if let Ok(password) = std::env::var("UMCLUSTER_PASSWORD") {
            let reply = match std::env::var("UMCLUSTER_USER") {
                Ok(user) => conn.call(&["AUTH", &user, &password])?,
                Err(_) => conn.call(&["AUTH", &password])?,
            };
            if let Value::Error(e) = reply {
                return Err(format!("{addr}: AUTH failed: {e}"));
            }
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply. A server error is an `Ok(Value::Error)`.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, String> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.stream
            .write_all(&out)
            .map_err(|e| format!("{}: write failed: {e}", self.addr))?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Value, String> {
        loop {
            match decode(&self.buf) {
                Ok((value, used)) => {
                    self.buf.drain(..used);
                    return Ok(value);
                }
                Err(DecodeError::Invalid(why)) => {
                    return Err(format!("{}: bad reply: {why}", self.addr))
                }
                Err(DecodeError::Incomplete) => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("{}: read failed: {e}", self.addr))?;
            if n == 0 {
                return Err(format!("{}: connection closed", self.addr));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Like [`Conn::call`], but a server error becomes `Err`.
    pub fn call_ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, String> {
        match self.call(args)? {
            Value::Error(e) => Err(format!("{}: {e}", self.addr)),
            v => Ok(v),
        }
    }
}

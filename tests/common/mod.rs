//! Shared harness of the Rust integration tests: real `redis-server` processes with the module
//! loaded, on free loopback ports, removed when the test ends (even when it fails).
//!
//! `Node` is one server; `Raw` is a plain RESP connection that returns replies exactly as sent
//! (error texts included); `wait_until` polls a condition with a deadline instead of sleeping.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use umcluster::resp::{decode, encode_command, DecodeError, Value};

/// Path of the module under test: `UMCLUSTER_MODULE`, or the `.so` cargo built next to the test.
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("UMCLUSTER_MODULE") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/libumcluster.so
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let so = profile_dir.join("libumcluster.so");
    assert!(so.exists(), "module not built at {}", so.display());
    so
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// One redis-server with the module loaded.
pub struct Node {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Node {
    /// Starts a server with the module.
    pub fn start() -> Node {
        Node::start_with(&[], true)
    }

    /// Starts a server without the module (for MODULE LOAD tests).
    pub fn start_plain() -> Node {
        Node::start_with(&[], false)
    }

    pub fn start_with(extra: &[&str], with_module: bool) -> Node {
        for _attempt in 0..20 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("umcluster-it-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create node dir");
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args([
                "--enable-debug-command",
                "yes",
                "--enable-module-command",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if with_module {
                cmd.arg("--loadmodule").arg(module_path());
            }
            cmd.args(extra);
            let child = cmd.spawn().expect("spawn redis-server (is it installed?)");
            let mut node = Node { port, child, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = node.child.try_wait() {
                    break; // exited: port taken or bad config; try another port
                }
                // Answering on the port is not enough: another test may have won the race for it.
                // The probe tolerates any failure: the server on the port may be another test's,
                // being killed (connection reset), or still loading.
                if let Ok(info) =
                    Raw::connect(port).and_then(|mut raw| raw.try_cmd(&["INFO", "server"]))
                {
                    let ours = format!("process_id:{}\r\n", node.child.id());
                    if info
                        .as_bytes()
                        .is_some_and(|t| String::from_utf8_lossy(t).contains(&ours))
                    {
                        return node;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("redis-server on {port} did not start; log:\n{}", node.log());
        }
        panic!("could not start redis-server");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.port).expect("connect to node")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of node {} ---\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain RESP connection: replies come back as sent.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> std::io::Result<Raw> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Raw {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command and returns its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        self.send(args);
        self.read()
    }

    /// Sends one command without reading the reply (pipelining, blocking commands).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.try_send(args).expect("write to node");
    }

    fn try_send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)
    }

    /// Reads one reply.
    pub fn read(&mut self) -> Value {
        self.try_read().expect("read from node")
    }

    /// Sends one command and returns its reply, or the I/O error (a closed connection too).
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Value> {
        self.try_send(args)?;
        self.try_read()
    }

    fn try_read(&mut self) -> std::io::Result<Value> {
        loop {
            match decode(&self.buf) {
                Ok((v, used)) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Err(DecodeError::Invalid(e)) => panic!("bad reply from server: {e}"),
                Err(DecodeError::Incomplete) => {}
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed by server",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A command given as one whitespace-separated string.
    pub fn line(&mut self, line: &str) -> Value {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.cmd(&args)
    }
}

/// The error text of a reply (panics on a non-error).
pub fn err(v: Value) -> String {
    match v {
        Value::Error(e) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub fn ok(v: Value) {
    assert_eq!(v, Value::Simple("OK".into()), "expected +OK");
}

pub fn bulk(v: &str) -> Value {
    Value::Bulk(v.as_bytes().to_vec())
}

/// A cluster of module nodes, each configured by `UMCTL SETCLUSTER` with an even slot split.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub epoch: u64,
}

/// Even split of the 16384 slots over `n` nodes (same rule as `umcluster create`).
pub fn split(n: usize) -> Vec<(u16, u16)> {
    let per = 16384.0 / n as f64;
    let mut first = 0i64;
    let mut cursor = 0.0;
    (0..n)
        .map(|i| {
            let mut last = (cursor + per - 1.0f64).round() as i64;
            if i == n - 1 {
                last = 16383;
            }
            let r = (first as u16, last as u16);
            first = last + 1;
            cursor += per;
            r
        })
        .collect()
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        let nodes: Vec<Node> = (0..n).map(|_| Node::start()).collect();
        let mut c = Cluster { nodes, epoch: 0 };
        let ranges = split(n);
        let table: Vec<(usize, Vec<(u16, u16)>)> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (i, vec![*r]))
            .collect();
        c.push(&table);
        c
    }

    /// Pushes a table (node index -> ranges) to every node with the next epoch.
    pub fn push(&mut self, table: &[(usize, Vec<(u16, u16)>)]) {
        self.epoch += 1;
        for i in 0..self.nodes.len() {
            let args = self.setcluster_args(i, table, &[]);
            ok(self.nodes[i].raw().cmd(&args));
        }
    }

    /// `UMCTL SETCLUSTER` arguments for node `me`; `extra_local`/peer groups are appended raw.
    pub fn setcluster_args(
        &self,
        me: usize,
        table: &[(usize, Vec<(u16, u16)>)],
        extra: &[String],
    ) -> Vec<String> {
        let mut args: Vec<String> = ["UMCTL", "SETCLUSTER", "v2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.epoch.to_string());
        args.push("NOFLAG".into());
        args.push("it".into());
        let group = |args: &mut Vec<String>, idx: usize, ranges: &[(u16, u16)]| {
            args.push(self.nodes[idx].addr());
            args.push(ranges.len().to_string());
            for (s, e) in ranges {
                args.push(format!("{s}-{e}"));
            }
        };
        if let Some((_, r)) = table.iter().find(|(i, _)| *i == me) {
            group(&mut args, me, r);
        }
        args.push("PEER".into());
        for (i, r) in table.iter().filter(|(i, _)| *i != me) {
            group(&mut args, *i, r);
        }
        args.extend(extra.iter().cloned());
        args
    }

    /// Index of the node owning `key`.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot = umcluster::slot::key_slot(key.as_bytes());
        split(self.nodes.len())
            .iter()
            .position(|(s, e)| (*s..=*e).contains(&slot))
            .expect("slot covered")
    }
}

/// A key whose slot is in `range`, with the given prefix.
pub fn key_in(range: (u16, u16), prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| {
            let s = umcluster::slot::key_slot(k.as_bytes());
            s >= range.0 && s <= range.1
        })
        .expect("some key hashes into the range")
}

/// The command table the module builds, from a plain server's `COMMAND` reply (the routing
/// tests that need no module: key positions exactly as the filter sees them).
pub fn real_command_table() -> umcluster::command_table::CommandTable {
    let node = Node::start_plain();
    let reply = node.raw().cmd(&["COMMAND"]);
    umcluster::command_table::CommandTable::from_command_reply(&reply)
        .expect("COMMAND reply parses")
}

/// A slot table that owns slots 0..8192; a peer (node 1) owns the rest.
pub fn half_owned_table() -> umcluster::router::SlotTable {
    use umcluster::router::{SlotRoute, SlotTable};
    let mut table = SlotTable::configured();
    for slot in 0..16384u16 {
        let route = if slot < 8192 {
            SlotRoute::Owned
        } else {
            SlotRoute::Remote { owner: 1 }
        };
        table.set(slot, route);
    }
    table
}

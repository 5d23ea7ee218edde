//! Cluster-wide `PUBLISH`: a message published on one node reaches the subscribers of every node,
//! as on a native cluster (which broadcasts it over the cluster bus).
//!
//! umcluster nodes have no bus, so each node forwards the messages its own clients publish to
//! every other master of the topology, as `umcluster.published <channel> <message>` (a command
//! that publishes locally without forwarding again). Each master's replicas get the message
//! through ordinary replication, like the publishes of the master's own clients.
//!
//! One thread per peer, started on the first message for it, writes to one connection. Delivery is
//! at most once, as pub/sub is anyway: a message for a peer that is down or too far behind (a
//! full queue) is dropped and counted, never buffered without bound and never waited for by the
//! server's main thread.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::Addr;
use crate::resp::encode_command;
use crate::transfer::Credentials;

/// The command peers run for a forwarded message.
pub const PUBLISHED_COMMAND: &str = "umcluster.published";

/// Messages one peer may have waiting before new ones are dropped.
const QUEUE_DEPTH: usize = 10_000;
/// How long a worker waits for a peer to accept a connection or a write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection, messages are dropped for this long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Counters shared with the workers.
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// The peers messages go to, and a worker per peer that has had a message.
#[derive(Debug, Default)]
pub struct Forwarder {
    peers: Vec<Addr>,
    workers: HashMap<Addr, SyncSender<Vec<u8>>>,
    /// Sent as `AUTH` first on every connection to a peer.
    credentials: Option<Credentials>,
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Sets the nodes messages are forwarded to. Workers of nodes no longer listed stop once their
    /// queue is drained (their sender is dropped here).
    pub fn set_peers(&mut self, peers: Vec<Addr>) {
        self.workers.retain(|addr, _| peers.contains(addr));
        self.peers = peers;
    }

    /// Sets the credentials for peers; workers connected with other ones are replaced.
    pub fn set_credentials(&mut self, credentials: Option<Credentials>) {
        if credentials != self.credentials {
            self.workers.clear();
            self.credentials = credentials;
        }
    }

    pub fn peers(&self) -> &[Addr] {
        &self.peers
    }

    /// Queues `channel`/`message` for every peer. Never blocks.
    pub fn forward(&mut self, channel: &[u8], message: &[u8]) {
        if self.peers.is_empty() {
            return;
        }
        let mut frame = Vec::with_capacity(channel.len() + message.len() + 64);
        encode_command(
            &mut frame,
            &[PUBLISHED_COMMAND.as_bytes(), channel, message],
        );
        for peer in &self.peers {
            let sender = self.workers.entry(peer.clone()).or_insert_with(|| {
                spawn_worker(peer.clone(), self.credentials.clone(), self.stats.clone())
            });
            match sender.try_send(frame.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn spawn_worker(
    peer: Addr,
    credentials: Option<Credentials>,
    stats: Arc<ForwardStats>,
) -> SyncSender<Vec<u8>> {
    let (tx, rx) = sync_channel(QUEUE_DEPTH);
    let spawned = std::thread::Builder::new()
        .name("umcluster-pub".into())
        .spawn(move || worker(peer, credentials, rx, stats));
    // Without a thread the receiver is gone: every send reports Disconnected and is counted.
    drop(spawned);
    tx
}

/// Writes every queued frame to `peer`, reconnecting as needed. Ends when the sender is dropped.
fn worker(
    peer: Addr,
    credentials: Option<Credentials>,
    rx: Receiver<Vec<u8>>,
    stats: Arc<ForwardStats>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut down_until: Option<Instant> = None;
    while let Ok(frame) = rx.recv() {
        if down_until.is_some_and(|t| Instant::now() < t) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if conn.is_none() {
            conn = connect(&peer, credentials.as_ref());
            if conn.is_none() {
                down_until = Some(Instant::now() + RETRY_AFTER);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            down_until = None;
        }
        let Some(stream) = conn.as_mut() else {
            continue;
        };
        if stream.write_all(&frame).is_ok() {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            drain_replies(stream);
        } else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
    }
}

/// Connects to `peer`; with credentials, `AUTH` goes first (its reply is drained with the
/// others: a refused `AUTH` makes the peer refuse the messages, which pub/sub may drop anyway).
fn connect(peer: &Addr, credentials: Option<&Credentials>) -> Option<TcpStream> {
    let target = (peer.host.as_str(), peer.port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_nonblocking(false).ok()?;
    if let Some(c) = credentials {
        let auth = c.auth_command();
        stream.write_all(&auth).ok()?;
    }
    Some(stream)
}

/// Reads and discards whatever replies the peer has sent, without waiting: the replies carry
/// nothing the sender needs, but unread they would pile up in the peer's output buffer.
fn drain_replies(stream: &mut TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = stream.set_nonblocking(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::net::TcpListener;

    fn addr_of(listener: &TcpListener) -> Addr {
        let port = listener.local_addr().expect("bound").port();
        Addr::parse(format!("127.0.0.1:{port}").as_bytes()).expect("addr")
    }

    #[test]
    fn messages_reach_every_peer_as_published_commands() {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut f = Forwarder::default();
        f.set_peers(vec![addr_of(&a), addr_of(&b)]);
        f.forward(b"news", b"hello");
        let mut expected = Vec::new();
        encode_command(
            &mut expected,
            &[b"umcluster.published".as_slice(), b"news", b"hello"],
        );
        for listener in [&a, &b] {
            let (stream, _) = listener.accept().expect("worker connects");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut got = vec![0u8; expected.len()];
            std::io::Read::read_exact(&mut BufReader::new(stream), &mut got).expect("frame");
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn no_peers_means_no_worker_and_nothing_dropped() {
        let mut f = Forwarder::default();
        f.forward(b"c", b"m");
        assert!(f.workers.is_empty());
        assert_eq!(f.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unreachable_peer_drops_and_counts() {
        // A port nobody listens on: bind, read the port, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut f = Forwarder::default();
        f.set_peers(vec![
            Addr::parse(format!("127.0.0.1:{port}").as_bytes()).expect("addr")
        ]);
        for _ in 0..3 {
            f.forward(b"c", b"m");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.stats.dropped.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(f.stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(f.stats.forwarded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn removed_peers_lose_their_worker() {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut f = Forwarder::default();
        f.set_peers(vec![addr_of(&a)]);
        f.forward(b"c", b"m");
        assert_eq!(f.workers.len(), 1);
        f.set_peers(vec![]);
        assert!(f.workers.is_empty());
        f.forward(b"c", b"m");
        assert!(f.workers.is_empty());
    }
}

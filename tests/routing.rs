//! Routing rules end to end (routing.md): exact redirect and error texts, ASK/ASKING/TRYAGAIN
//! for open slots, transactions, scripts, blocking commands and pub/sub, against real servers.

mod common;

use std::time::Duration;

use common::*;
use umcluster::resp::Value;
use umcluster::slot::key_slot;

/// Two nodes: 0 owns 0-8191, 1 owns 8192-16383.
fn two_nodes() -> Cluster {
    Cluster::start(2)
}

fn is_array_of(v: &Value, n: usize) -> bool {
    matches!(v, Value::Array(items) if items.len() == n)
}

#[test]
fn moved_when_slot_owned_by_peer() {
    let c = two_nodes();
    let remote = key_in((8192, 16383), "k");
    let e = err(c.nodes[0].raw().cmd(&["GET", &remote]));
    assert_eq!(
        e,
        format!(
            "MOVED {} {}",
            key_slot(remote.as_bytes()),
            c.nodes[1].addr()
        )
    );
    let local = key_in((0, 8191), "k");
    ok(c.nodes[0].raw().cmd(&["SET", &local, "v"]));
    assert_eq!(c.nodes[0].raw().cmd(&["GET", &local]), bulk("v"));
}

#[test]
fn clusterdown_until_a_topology_is_accepted() {
    let n = Node::start();
    let mut r = n.raw();
    assert_eq!(err(r.line("GET foo")), "CLUSTERDOWN The cluster is down");
    assert_eq!(
        err(r.line("SET foo bar")),
        "CLUSTERDOWN The cluster is down"
    );
    // Keyless commands run locally, as on a native node.
    assert_eq!(r.line("PING"), Value::Simple("PONG".into()));
    assert_eq!(r.line("DBSIZE"), Value::Int(0));
    assert!(is_array_of(&r.line("KEYS *"), 0));
    assert!(matches!(r.line("CONFIG GET port"), Value::Array(_)));
    ok(r.line("FLUSHALL"));
}

#[test]
fn clusterdown_for_a_slot_nobody_serves() {
    let n = Node::start();
    let mut r = n.raw();
    ok(r.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "1",
        "NOFLAG",
        "db",
        &n.addr(),
        "1",
        "0-100",
    ]));
    let k = key_in((200, 16383), "x");
    assert_eq!(err(r.cmd(&["GET", &k])), "CLUSTERDOWN Hash slot not served");
    let mine = key_in((0, 100), "x");
    assert_eq!(r.cmd(&["GET", &mine]), Value::Nil);
}

#[test]
fn crossslot_for_keys_in_different_slots() {
    let n = Node::start();
    let mut r = n.raw();
    ok(r.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "1",
        "NOFLAG",
        "db",
        &n.addr(),
        "1",
        "0-16383",
    ]));
    assert_eq!(
        err(r.line("MSET a 1 b 2")),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
    ok(r.line("MSET {t}a 1 {t}b 2"));
    assert_eq!(
        r.line("MGET {t}a {t}b"),
        Value::Array(vec![bulk("1"), bulk("2")])
    );
    // The same key twice is one key.
    ok(r.line("MSET a 1 a 2"));
}

#[test]
fn movable_keys_are_routed_by_the_servers_command_table() {
    let c = two_nodes();
    let remote = key_in((8192, 16383), "r");
    let local = key_in((0, 8191), "l");
    let mut r = c.nodes[0].raw();
    let moved = format!(
        "MOVED {} {}",
        key_slot(remote.as_bytes()),
        c.nodes[1].addr()
    );
    assert_eq!(err(r.cmd(&["EVAL", "return 1", "1", &remote])), moved);
    assert_eq!(
        err(r.cmd(&[
            "EVALSHA",
            "0000000000000000000000000000000000000000",
            "1",
            &remote
        ])),
        moved
    );
    assert_eq!(
        err(r.cmd(&["XREAD", "COUNT", "1", "STREAMS", &remote, "0"])),
        moved
    );
    assert_eq!(err(r.cmd(&["ZUNIONSTORE", &remote, "1", &remote])), moved);
    assert_eq!(err(r.cmd(&["OBJECT", "ENCODING", &remote])), moved);
    assert_eq!(err(r.cmd(&["XINFO", "STREAM", &remote])), moved);
    assert_eq!(err(r.cmd(&["LMPOP", "1", &remote, "LEFT"])), moved);
    assert!(err(r.cmd(&["SORT", &local, "STORE", &remote])).starts_with("CROSSSLOT"));
    assert!(err(r.cmd(&["ZUNIONSTORE", &local, "2", &local, &remote])).starts_with("CROSSSLOT"));
    // Keys the command does not have: EVAL with zero keys runs locally.
    assert_eq!(r.cmd(&["EVAL", "return 7", "0"]), Value::Int(7));
    ok(r.cmd(&["SET", &local, "1"]));
    assert_eq!(
        r.cmd(&["EVAL", "return redis.call('get', KEYS[1])", "1", &local]),
        bulk("1")
    );
}

#[test]
fn malformed_commands_are_left_to_the_server() {
    let c = two_nodes();
    let mut r = c.nodes[0].raw();
    let remote = key_in((8192, 16383), "r");
    // Wrong arity: the server's own error, not a redirect.
    assert_eq!(
        err(r.line("GET")),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err(r.cmd(&["GET", &remote, "extra"])),
        "ERR wrong number of arguments for 'get' command"
    );
    assert!(err(r.line("NOSUCHCOMMAND x")).starts_with("ERR unknown command"));
    assert!(err(r.line("XINFO NOSUCHSUB x")).starts_with("ERR unknown subcommand"));
    // EVAL with a numkeys larger than the arguments: the server reports it.
    assert!(err(r.cmd(&["EVAL", "return 1", "5", &remote])).contains("greater than"));
}

/// A slot in node 0's range with node 0 migrating it to node 1, and node 1 importing it.
fn migrating_pair() -> (Cluster, u16, String) {
    let mut c = two_nodes();
    // A hash tag in node A's half; siblings share the tag, hence the slot.
    let k = format!("{{{}}}", key_in((0, 8191), "m"));
    let s = key_slot(k.as_bytes());
    ok(c.nodes[0].raw().cmd(&["SET", &k, "here"]));
    c.epoch += 1;
    let (a, b) = (c.nodes[0].addr(), c.nodes[1].addr());
    let meta = format!("{} {a} {a} {b} {b}", c.epoch);
    let mut stable_a = vec![];
    if s > 0 {
        stable_a.push(format!("0-{}", s - 1));
    }
    if s < 8191 {
        stable_a.push(format!("{}-8191", s + 1));
    }
    let a_cmd = format!(
        "UMCTL SETCLUSTER v2 {} NOFLAG it {a} {} {} {a} migrating 1 {s}-{s} {meta} PEER {b} 1 8192-16383 {b} importing 1 {s}-{s} {meta} {HOLD}",
        c.epoch,
        stable_a.len(),
        stable_a.join(" ")
    );
    let b_cmd = format!(
        "UMCTL SETCLUSTER v2 {} NOFLAG it {b} 1 8192-16383 {b} importing 1 {s}-{s} {meta} PEER {a} {} {} {a} migrating 1 {s}-{s} {meta} {HOLD}",
        c.epoch,
        stable_a.len(),
        stable_a.join(" ")
    );
    ok(c.nodes[0].raw().line(&a_cmd));
    ok(c.nodes[1].raw().line(&b_cmd));
    (c, s, k)
}

/// Holds a migration open: the source's mover waits this long (an hour, in µs) between scan
/// steps, so the keys stay where the test put them.
const HOLD: &str = "CONFIG migration_scan_interval 3600000000";

/// Another key in the same slot as `k` (same hash tag).
fn sibling(k: &str, n: u32) -> String {
    format!("{k}sibling{n}")
}

#[test]
fn migrating_slot_serves_present_keys_and_asks_for_missing_ones() {
    let (c, s, k) = migrating_pair();
    let mut a = c.nodes[0].raw();
    let missing = sibling(&k, 1);
    assert_eq!(key_slot(missing.as_bytes()), s);
    assert_eq!(a.cmd(&["GET", &k]), bulk("here"));
    let ask = format!("ASK {s} {}", c.nodes[1].addr());
    assert_eq!(err(a.cmd(&["GET", &missing])), ask);
    // A write to a missing key is asked too (native rule).
    assert_eq!(err(a.cmd(&["SET", &missing, "x"])), ask);
    assert_eq!(
        err(a.cmd(&["MGET", &k, &missing])),
        "TRYAGAIN Multiple keys request during rehashing of slot"
    );
    // CLUSTER NODES shows the open slot on the node's own line.
    let nodes = a.line("CLUSTER NODES");
    let text = String::from_utf8(nodes.as_bytes().unwrap().to_vec()).unwrap();
    assert!(
        text.lines().next().unwrap().contains(&format!("[{s}->-")),
        "{text}"
    );
}

#[test]
fn importing_slot_serves_only_after_asking_and_asking_is_one_shot() {
    let (c, s, k) = migrating_pair();
    let mut b = c.nodes[1].raw();
    let key = sibling(&k, 2);
    let moved = format!("MOVED {s} {}", c.nodes[0].addr());
    assert_eq!(err(b.cmd(&["GET", &key])), moved);
    ok(b.line("ASKING"));
    assert_eq!(b.cmd(&["GET", &key]), Value::Nil);
    // One-shot: the next command is redirected again.
    assert_eq!(err(b.cmd(&["GET", &key])), moved);
    ok(b.line("ASKING"));
    ok(b.cmd(&["SET", &key, "new"]));
    ok(b.line("ASKING"));
    assert_eq!(b.cmd(&["GET", &key]), bulk("new"));
    // A keyless command consumes ASKING as well.
    ok(b.line("ASKING"));
    assert_eq!(b.line("PING"), Value::Simple("PONG".into()));
    assert_eq!(err(b.cmd(&["GET", &key])), moved);
    // Multi-key with a key still missing here: TRYAGAIN.
    ok(b.line("ASKING"));
    assert_eq!(
        err(b.cmd(&["MGET", &key, &sibling(&k, 3)])),
        "TRYAGAIN Multiple keys request during rehashing of slot"
    );
    // ASKING belongs to the connection that sent it.
    let mut other = c.nodes[1].raw();
    ok(b.line("ASKING"));
    assert_eq!(err(other.cmd(&["GET", &key])), moved);
    assert_eq!(b.cmd(&["GET", &key]), bulk("new"));
}

#[test]
fn asking_covers_a_whole_transaction() {
    let (c, _s, k) = migrating_pair();
    let mut b = c.nodes[1].raw();
    let key = sibling(&k, 4);
    ok(b.line("ASKING"));
    ok(b.line("MULTI"));
    assert_eq!(b.cmd(&["SET", &key, "1"]), Value::Simple("QUEUED".into()));
    assert_eq!(b.cmd(&["INCR", &key]), Value::Simple("QUEUED".into()));
    assert_eq!(
        b.line("EXEC"),
        Value::Array(vec![Value::Simple("OK".into()), Value::Int(2)])
    );
    // ... and ends with it.
    assert!(err(b.cmd(&["GET", &key])).starts_with("MOVED"));
}

#[test]
fn multi_aborts_as_a_whole_when_a_queued_command_would_be_redirected() {
    let c = two_nodes();
    let mut r = c.nodes[0].raw();
    let local = key_in((0, 8191), "l");
    let remote = key_in((8192, 16383), "r");
    ok(r.line("MULTI"));
    assert_eq!(r.cmd(&["SET", &local, "1"]), Value::Simple("QUEUED".into()));
    let e = err(r.cmd(&["SET", &remote, "1"]));
    assert!(
        e.contains(&format!(
            "MOVED {} {}",
            key_slot(remote.as_bytes()),
            c.nodes[1].addr()
        )),
        "the rejection names the redirect: {e}"
    );
    assert!(err(r.line("EXEC")).starts_with("EXECABORT"));
    assert_eq!(
        r.cmd(&["GET", &local]),
        Value::Nil,
        "nothing of the transaction ran"
    );
    assert_eq!(c.nodes[1].raw().cmd(&["DBSIZE"]), Value::Int(0));
    // The connection is usable afterwards.
    ok(r.cmd(&["SET", &local, "2"]));
}

#[test]
fn multi_on_one_owned_slot_executes() {
    let n = Node::start();
    let mut r = n.raw();
    ok(r.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "1",
        "NOFLAG",
        "db",
        &n.addr(),
        "1",
        "0-16383",
    ]));
    ok(r.line("MULTI"));
    r.line("SET {t}a 1");
    r.line("INCR {t}b");
    r.line("PING");
    assert!(is_array_of(&r.line("EXEC"), 3));
    assert_eq!(r.line("GET {t}b"), bulk("1"));
}

#[test]
fn multi_spanning_two_slots_aborts() {
    let n = Node::start();
    let mut r = n.raw();
    ok(r.cmd(&[
        "UMCTL",
        "SETCLUSTER",
        "v2",
        "1",
        "NOFLAG",
        "db",
        &n.addr(),
        "1",
        "0-16383",
    ]));
    ok(r.line("MULTI"));
    assert_eq!(r.line("SET a 1"), Value::Simple("QUEUED".into()));
    assert!(err(r.line("SET b 1")).contains("CROSSSLOT"));
    assert!(err(r.line("EXEC")).starts_with("EXECABORT"));
    assert_eq!(r.line("DBSIZE"), Value::Int(0));
}

#[test]
fn exec_aborts_when_the_slot_moved_away_after_queueing() {
    let mut c = two_nodes();
    let local = key_in((0, 8191), "l");
    let mut r = c.nodes[0].raw();
    ok(r.line("MULTI"));
    assert_eq!(r.cmd(&["SET", &local, "1"]), Value::Simple("QUEUED".into()));
    // The control plane gives every slot to node 1 before EXEC.
    c.push(&[(1, vec![(0, 16383)])]);
    assert!(err(r.line("EXEC")).starts_with("EXECABORT"));
    assert_eq!(
        c.nodes[0].raw().line("DBSIZE"),
        Value::Int(0),
        "the write did not land on node 0"
    );
    // A transaction that stays on an owned slot across an unrelated push still executes.
    let mut r1 = c.nodes[1].raw();
    ok(r1.line("MULTI"));
    r1.cmd(&["SET", &local, "1"]);
    c.push(&[(1, vec![(0, 16382)]), (0, vec![(16383, 16383)])]);
    assert!(is_array_of(&r1.line("EXEC"), 1));
}

#[test]
fn scripts_cannot_touch_keys_this_node_does_not_serve() {
    let c = two_nodes();
    let mut r = c.nodes[0].raw();
    let remote = key_in((8192, 16383), "r");
    let local = key_in((0, 8191), "l");
    let e = err(r.cmd(&[
        "EVAL",
        "return redis.call('set', ARGV[1], 'x')",
        "0",
        &remote,
    ]));
    assert!(
        e.contains("Script attempted to access a non local key in a cluster node"),
        "{e}"
    );
    assert_eq!(
        r.line("DBSIZE"),
        Value::Int(0),
        "the script did not write locally"
    );
    let e = err(r.cmd(&["EVAL", "return redis.call('get', ARGV[1])", "0", &remote]));
    assert!(e.contains("non local key"), "{e}");
    // pcall sees the error as a value; still nothing written.
    let v = r.cmd(&[
        "EVAL",
        "local ok = redis.pcall('set', ARGV[1], 'x'); return 1",
        "0",
        &remote,
    ]);
    assert_eq!(v, Value::Int(1));
    assert_eq!(r.line("DBSIZE"), Value::Int(0));
    assert_eq!(
        r.cmd(&[
            "EVAL",
            "redis.call('set', KEYS[1], 'y'); return redis.call('get', KEYS[1])",
            "1",
            &local
        ]),
        bulk("y")
    );
    // Functions follow the same rule.
    let lib = "#!lua name=t\nredis.register_function('w', function(keys, args) return redis.call('set', args[1], 'x') end)";
    assert_eq!(r.cmd(&["FUNCTION", "LOAD", lib]), bulk("t"));
    assert!(err(r.cmd(&["FCALL", "w", "0", &remote])).contains("non local key"));
}

#[test]
fn blocking_pop_on_owned_key_is_served_and_on_remote_key_redirected() {
    let c = two_nodes();
    let local = key_in((0, 8191), "q");
    let remote = key_in((8192, 16383), "q");
    let mut waiter = c.nodes[0].raw();
    waiter.cmd(&["CLIENT", "SETNAME", "waiter"]);
    waiter.send(&["BLPOP", &local, "10"]);
    let mut pusher = c.nodes[0].raw();
    wait_until(Duration::from_secs(5), "the BLPOP client to block", || {
        let clients = pusher.line("CLIENT LIST");
        String::from_utf8_lossy(clients.as_bytes().unwrap_or_default()).contains("name=waiter")
            && String::from_utf8_lossy(clients.as_bytes().unwrap_or_default()).contains("cmd=blpop")
    });
    assert_eq!(pusher.cmd(&["RPUSH", &local, "x"]), Value::Int(1));
    assert_eq!(waiter.read(), Value::Array(vec![bulk(&local), bulk("x")]));
    assert!(err(waiter.cmd(&["BLPOP", &remote, "1"])).starts_with("MOVED"));
}

#[test]
fn pubsub_works_and_sharded_channels_are_routed() {
    let c = two_nodes();
    let mut sub = c.nodes[0].raw();
    assert!(is_array_of(&sub.line("SUBSCRIBE news"), 3));
    assert_eq!(c.nodes[0].raw().line("PUBLISH news hello"), Value::Int(1));
    assert_eq!(
        sub.read(),
        Value::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );

    let local = key_in((0, 8191), "ch");
    let remote = key_in((8192, 16383), "ch");
    let mut pub_conn = c.nodes[0].raw();
    assert!(err(pub_conn.cmd(&["SPUBLISH", &remote, "m"])).starts_with("MOVED"));
    let mut ssub = c.nodes[0].raw();
    assert!(is_array_of(&ssub.cmd(&["SSUBSCRIBE", &local]), 3));
    assert_eq!(pub_conn.cmd(&["SPUBLISH", &local, "m"]), Value::Int(1));
    assert_eq!(
        ssub.read(),
        Value::Array(vec![bulk("smessage"), bulk(&local), bulk("m")])
    );
}

#[test]
fn keys_are_routed_in_every_database() {
    let c = two_nodes();
    let mut r = c.nodes[0].raw();
    ok(r.line("SELECT 3"));
    let remote = key_in((8192, 16383), "r");
    assert!(err(r.cmd(&["SET", &remote, "x"])).starts_with("MOVED"));
    let local = key_in((0, 8191), "l");
    ok(r.cmd(&["SET", &local, "x"]));
}

#[test]
fn umctl_answers_under_both_spellings_and_counts_redirects() {
    let c = two_nodes();
    let mut r = c.nodes[0].raw();
    assert_eq!(r.line("UMCTL GETEPOCH"), Value::Int(1));
    assert_eq!(r.line("umctl.getepoch"), Value::Int(1));
    assert_eq!(r.line("UMCTL.READY"), Value::Int(1));
    assert!(is_array_of(&r.line("UMCTL INFOMGR"), 0));
    let info = |r: &mut Raw| {
        String::from_utf8(r.line("INFO umcluster").as_bytes().unwrap().to_vec()).unwrap()
    };
    let before = info(&mut r);
    assert!(before.contains("umcluster_epoch:1"), "{before}");
    assert!(before.contains("umcluster_redirect_moved:0"));
    let remote = key_in((8192, 16383), "r");
    r.cmd(&["GET", &remote]);
    assert!(info(&mut r).contains("umcluster_redirect_moved:1"));
    assert!(info(&mut r).contains("umcluster_client_identity:ok"));
}

#[test]
fn stale_and_malformed_pushes_leave_the_table_and_the_server_alone() {
    let mut c = two_nodes();
    let mut r = c.nodes[0].raw();
    let slots_before = r.line("CLUSTER SLOTS");
    let stale = c.setcluster_args(0, &[(0, vec![(0, 16383)])], &[]);
    assert_eq!(err(r.cmd(&stale)), "OLD_EPOCH");
    for bad in [
        "UMCTL SETCLUSTER v2 9 NOFLAG it 127.0.0.1:1 1 0-5",
        "UMCTL SETCLUSTER v2 9 NOFLAG",
        "UMCTL SETCLUSTER v2 9 NOFLAG bad.name",
        "UMCTL SETCLUSTER v2 x NOFLAG it",
        "UMCTL SETCLUSTER v2 9 NOFLAG it PEER 127.0.0.1:1 2 0-5",
        "UMCTL SETCLUSTER v2 9 NOFLAG it PEER 127.0.0.1:1 1 5-0",
        "UMCTL SETCLUSTER v2 9 NOFLAG it PEER 127.0.0.1:1 1 0-16384",
        "UMCTL SETCLUSTER v2 9 NOFLAG it PEER 127.0.0.1:1 1 0-5 127.0.0.1:2 1 5-9",
        "UMCTL SETCLUSTER v2 9 NOFLAG it PEER 127.0.0.1:1 1 0-5 trailing",
        "UMCTL SETCLUSTER v2 9 COMPRESS not-base64",
        "UMCTL SETREPL x NOFLAG",
        "UMCTL NOSUCH",
        "UMCTL",
        "CLUSTER",
        "CLUSTER ADDSLOTS 1",
        "CLUSTER COUNTKEYSINSLOT 99999",
    ] {
        assert!(matches!(r.line(bad), Value::Error(_)), "{bad} should fail");
    }
    // Epoch 9 was never accepted.
    assert_eq!(r.line("UMCTL GETEPOCH"), Value::Int(1));
    assert_eq!(r.line("CLUSTER SLOTS"), slots_before);
    assert_eq!(r.line("PING"), Value::Simple("PONG".into()));
    assert!(c.nodes[0].alive());
    // A newer valid push is still accepted afterwards.
    c.push(&[(0, vec![(0, 16383)])]);
    assert_eq!(c.nodes[0].raw().line("UMCTL GETEPOCH"), Value::Int(2));
}

#[test]
fn clients_blocked_on_a_slot_that_moves_away_are_released_and_then_redirected() {
    let mut c = two_nodes();
    let moving = key_in((0, 99), "bq");
    let staying = key_in((100, 8191), "bq");
    let moving_slot = key_slot(moving.as_bytes());
    let mut w1 = c.nodes[0].raw();
    w1.cmd(&["CLIENT", "SETNAME", "w1"]);
    w1.send(&["BLPOP", &moving, "0"]);
    let mut w2 = c.nodes[0].raw();
    w2.cmd(&["CLIENT", "SETNAME", "w2"]);
    w2.send(&["BLPOP", &staying, "0"]);
    let mut admin = c.nodes[0].raw();
    wait_until(Duration::from_secs(5), "both clients to block", || {
        let list = admin.line("CLIENT LIST");
        let text = String::from_utf8_lossy(list.as_bytes().unwrap_or_default()).into_owned();
        text.lines()
            .filter(|l| (l.contains("name=w1") || l.contains("name=w2")) && l.contains("cmd=blpop"))
            .count()
            == 2
    });
    // Slots 0-99 move to node 1.
    c.push(&[(0, vec![(100, 8191)]), (1, vec![(0, 99), (8192, 16383)])]);
    assert_eq!(
        err(w1.read()),
        "UNBLOCKED client unblocked via CLIENT UNBLOCK"
    );
    assert_eq!(
        err(w1.cmd(&["BLPOP", &moving, "0"])),
        format!("MOVED {moving_slot} {}", c.nodes[1].addr())
    );
    // The other client still waits on its slot, and gets its element.
    assert_eq!(admin.cmd(&["RPUSH", &staying, "x"]), Value::Int(1));
    assert_eq!(w2.read(), Value::Array(vec![bulk(&staying), bulk("x")]));
    assert!(matches!(
        admin.line("INFO umcluster"),
        Value::Bulk(ref t) if String::from_utf8_lossy(t).contains("umcluster_blocked_released:1")
    ));
}

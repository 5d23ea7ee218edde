//! redis-rs's cluster client against a 3-node umcluster cluster: it discovers the topology from
//! `CLUSTER SLOTS`, follows `MOVED`, and every key it writes lands on the node owning its slot.

mod common;

use common::*;
use redis::cluster::ClusterClient;
use redis::Commands;
use umcluster::resp::Value;

#[test]
fn cluster_client_writes_and_reads_thousands_of_keys_each_on_its_owner() {
    let c = Cluster::start(3);
    let client = ClusterClient::new(
        c.nodes
            .iter()
            .map(|n| format!("redis://{}/", n.addr()))
            .collect::<Vec<_>>(),
    )
    .expect("cluster client");
    let mut con = client.get_connection().expect("connect to the cluster");
    const N: usize = 3000;
    for i in 0..N {
        let _: () = con
            .set(format!("key:{i}"), i)
            .expect("SET through the cluster client");
    }
    for i in 0..N {
        let v: usize = con
            .get(format!("key:{i}"))
            .expect("GET through the cluster client");
        assert_eq!(v, i);
    }
    // Every key lives on its owner and nowhere else.
    let mut per_node = [0i64; 3];
    for i in 0..N {
        let key = format!("key:{i}");
        let owner = c.owner_of(&key);
        per_node[owner] += 1;
        for (j, node) in c.nodes.iter().enumerate() {
            if j == owner {
                continue;
            }
            // Another node answers MOVED: the key is not there.
            assert!(
                matches!(node.raw().cmd(&["GET", &key]), Value::Error(e) if e.starts_with("MOVED"))
            );
        }
    }
    for (j, node) in c.nodes.iter().enumerate() {
        assert_eq!(
            node.raw().line("DBSIZE"),
            Value::Int(per_node[j]),
            "node {j} holds exactly its keys"
        );
        assert!(
            per_node[j] > N as i64 / 5,
            "keys are spread over every node"
        );
    }
}

#[test]
fn cluster_client_pipelines_and_hash_tags() {
    let c = Cluster::start(3);
    let client = ClusterClient::new(vec![format!("redis://{}/", c.nodes[1].addr())])
        .expect("cluster client");
    let mut con = client.get_connection().expect("connect");
    let mut pipe = redis::cluster::cluster_pipe();
    for i in 0..200 {
        pipe.cmd("INCRBY")
            .arg(format!("counter:{i}"))
            .arg(i)
            .ignore();
    }
    let _: () = pipe.query(&mut con).expect("cluster pipeline");
    for i in 0..200 {
        let v: i64 = con.get(format!("counter:{i}")).expect("read back");
        assert_eq!(v, i);
    }
    let _: () = redis::cmd("MSET")
        .arg("{user:1}:name")
        .arg("ada")
        .arg("{user:1}:lang")
        .arg("rust")
        .query(&mut con)
        .expect("MSET with one hash tag");
    let both: Vec<String> = redis::cmd("MGET")
        .arg("{user:1}:name")
        .arg("{user:1}:lang")
        .query(&mut con)
        .expect("MGET");
    assert_eq!(both, vec!["ada", "rust"]);
    // redis-rs splits MSET over slots itself; a command it cannot split gets the server's CROSSSLOT.
    let _: () = con.set("a", "1").expect("SET a");
    let crossslot = redis::cmd("RENAME").arg("a").arg("b").query::<()>(&mut con);
    let e = crossslot.expect_err("keys in different slots are refused");
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
}

/// The topology change of the client matrix: node 0's first 100 slots (kept empty until then)
/// move to node 1 with a higher epoch.
const EMPTY: (u16, u16) = (0, 99);

fn moved_table(c: &Cluster) -> Vec<(usize, Vec<(u16, u16)>)> {
    let r = split(c.nodes.len());
    vec![
        (0, vec![(EMPTY.1 + 1, r[0].1)]),
        (1, vec![EMPTY, r[1]]),
        (2, vec![r[2]]),
    ]
}

fn outside_empty(prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| umcluster::slot::key_slot(k.as_bytes()) > EMPTY.1)
        .take(n)
        .collect()
}

fn inside_empty(prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| umcluster::slot::key_slot(k.as_bytes()) <= EMPTY.1)
        .take(n)
        .collect()
}

fn assert_on_new_owner(c: &Cluster, keys: &[String]) {
    for k in keys {
        assert_eq!(c.nodes[1].raw().cmd(&["EXISTS", k]), Value::Int(1));
        assert!(
            matches!(c.nodes[0].raw().cmd(&["GET", k]), Value::Error(e) if e.starts_with("MOVED"))
        );
    }
}

#[test]
fn matrix_sync_client_follows_a_topology_change_mid_run() {
    let mut c = Cluster::start(3);
    let client = ClusterClient::new(vec![format!("redis://{}/", c.nodes[0].addr())])
        .expect("cluster client");
    let mut con = client.get_connection().expect("connect");
    let keys = outside_empty("rs:", 1000);
    for (i, k) in keys.iter().enumerate() {
        let _: () = con.set(k, i).expect("SET");
    }
    // A Lua script through the cluster connection, routed by its key.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let v: i64 = script
        .key("{rs}lua")
        .arg(5)
        .invoke(&mut con)
        .expect("script");
    assert_eq!(v, 5);
    // A transaction on one slot, on the owner (the cluster client has no MULTI).
    let owner = c.owner_of("{rs}tx");
    let mut direct = redis::Client::open(format!("redis://{}/", c.nodes[owner].addr()))
        .expect("client")
        .get_connection()
        .expect("direct connection");
    let (a, b): (String, i64) = redis::pipe()
        .atomic()
        .set("{rs}tx", 41)
        .incr("{rs}tx", 1)
        .query(&mut direct)
        .expect("MULTI/EXEC on one slot");
    assert_eq!((a.as_str(), b), ("OK", 42));

    c.push(&moved_table(&c));
    let moved = inside_empty("rs-moved:", 20);
    for k in &moved {
        let _: () = con
            .set(k, "after")
            .expect("SET after the move follows MOVED");
    }
    for k in &moved {
        let v: String = con.get(k).expect("GET after the move");
        assert_eq!(v, "after");
    }
    assert_on_new_owner(&c, &moved);
    for (i, k) in keys.iter().enumerate().take(300) {
        let v: usize = con.get(k).expect("old keys still readable");
        assert_eq!(v, i);
    }
}

#[test]
fn matrix_async_client_follows_a_topology_change_mid_run() {
    let mut c = Cluster::start(3);
    let seed = format!("redis://{}/", c.nodes[2].addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let keys = outside_empty("ars:", 1000);
    let client = ClusterClient::new(vec![seed]).expect("cluster client");
    let mut con = rt
        .block_on(client.get_async_connection())
        .expect("async connect");
    rt.block_on(async {
        use redis::AsyncCommands;
        for (i, k) in keys.iter().enumerate() {
            let _: () = con.set(k, i).await.expect("async SET");
        }
        // The async cluster pipeline wants one slot: one hash tag.
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("INCRBY").arg(format!("{{ars-p}}{i}")).arg(i);
        }
        let incremented: Vec<usize> = pipe.query_async(&mut con).await.expect("async pipeline");
        assert_eq!(incremented, (0..100).collect::<Vec<_>>());
        let _: () = redis::cmd("MSET")
            .arg("{ars}a")
            .arg("1")
            .arg("{ars}b")
            .arg("2")
            .query_async(&mut con)
            .await
            .expect("MSET with one tag");
        let both: Vec<String> = con.mget(&["{ars}a", "{ars}b"]).await.expect("MGET");
        assert_eq!(both, vec!["1", "2"]);
    });
    c.push(&moved_table(&c));
    let moved = inside_empty("ars-moved:", 20);
    rt.block_on(async {
        use redis::AsyncCommands;
        for k in &moved {
            let _: () = con.set(k, "after").await.expect("async SET after the move");
        }
        for (i, k) in keys.iter().enumerate().skip(100).take(200) {
            let v: usize = con.get(k).await.expect("old keys still readable");
            assert_eq!(v, i);
        }
    });
    assert_on_new_owner(&c, &moved);
}

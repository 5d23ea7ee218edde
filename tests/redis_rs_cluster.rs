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

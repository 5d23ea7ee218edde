"""Stock cluster clients against a 3-node cluster built by `umcluster create`.

Covers what a smart client relies on (routing.md): redis-py's `RedisCluster` reads and writes
thousands of keys and every key ends up on the node owning its slot and nowhere else; pipelines;
multi-key commands with hash tags; CROSSSLOT for keys in different slots; `redis-cli -c` following
MOVED; `redis-benchmark --cluster` running without a single redirect or error; and the CLUSTER
SLOTS / NODES / SHARDS / INFO / MYID replies parsed by redis-py, describing three masters and full
slot coverage.

All tests share one cluster (`cluster3`): none of them changes the topology.
"""

import subprocess

import pytest
import redis

from conftest import (
    HOST,
    SLOT_COUNT,
    THREE_NODE_RANGES,
    info_fields,
    key_in_slot_range,
    key_slot,
    raw,
)


def all_keys(node):
    return set(node.client().scan_iter(count=1000))


def assert_every_key_on_its_owner(cluster):
    """Every key of every node hashes to a slot that node owns; no key is on two nodes.
    Returns {key: node}."""
    where = {}
    for node, (lo, hi) in zip(cluster.nodes, cluster.ranges):
        for key in all_keys(node):
            slot = key_slot(key)
            assert lo <= slot <= hi, f"{key!r} (slot {slot}) is on {node.addr}, which serves {lo}-{hi}"
            assert key not in where, f"{key!r} is on both {where[key].addr} and {node.addr}"
            where[key] = node
    return where


def test_keys_written_through_redis_cluster_live_only_on_the_node_owning_their_slot(cluster3):
    rc = cluster3.client()
    keys = [f"user:{i}" for i in range(3000)]
    for i, k in enumerate(keys):
        assert rc.set(k, f"v{i}")
    for i, k in enumerate(keys):
        assert rc.get(k) == f"v{i}"

    where = assert_every_key_on_its_owner(cluster3)
    assert set(keys) <= set(where), "some written keys are on no node at all"
    for k in keys:
        assert where[k] is cluster3.owner_of(key_slot(k))
    # The keys really are spread: each node holds roughly a third of them.
    for node in cluster3.nodes:
        mine = [k for k in keys if where[k] is node]
        assert 700 < len(mine) < 1300, f"{node.addr} holds {len(mine)} of {len(keys)} keys"
        # Plain (non-cluster) reads on the owner see the value directly.
        sample = mine[0]
        assert node.client().get(sample) == f"v{keys.index(sample)}"


def test_our_slot_function_agrees_with_cluster_keyslot(cluster3):
    # The placement checks above use a Python CRC16; make sure it is the server's.
    node = cluster3.nodes[1]
    for key in ["age", "a", "b", "foo", "{user1000}.following", "{}x", "{a}{b}", "user:2999", "é"]:
        assert raw(node, "CLUSTER", "KEYSLOT", key) == key_slot(key), key
    assert key_slot("age") == 741 and key_slot("foo") == 12182


def test_pipeline_of_mixed_commands_across_nodes(cluster3):
    rc = cluster3.client()
    # One key per node, so the pipeline is split across all three masters.
    k = [key_in_slot_range(f"pipe:{i}:", lo, hi) for i, (lo, hi) in enumerate(THREE_NODE_RANGES)]
    pipe = rc.pipeline(transaction=False)
    pipe.set(k[0], "hello")
    pipe.incr(k[1] + ":n")
    pipe.incrby(k[1] + ":n", 41)
    pipe.hset(k[2], mapping={"f1": "a", "f2": "b"})
    pipe.rpush(k[0] + ":l", "x", "y", "z")
    pipe.sadd(k[1] + ":s", "m1", "m2")
    pipe.zadd(k[2] + ":z", {"one": 1, "two": 2})
    pipe.expire(k[0], 1000)
    pipe.get(k[0])
    pipe.hgetall(k[2])
    pipe.lrange(k[0] + ":l", 0, -1)
    pipe.smembers(k[1] + ":s")
    pipe.zrange(k[2] + ":z", 0, -1, withscores=True)
    pipe.ttl(k[0])
    pipe.delete(k[1] + ":n")
    pipe.exists(k[1] + ":n")
    res = pipe.execute()
    assert res[:8] == [True, 1, 42, 2, 3, 2, 2, True]
    assert res[8] == "hello"
    assert res[9] == {"f1": "a", "f2": "b"}
    assert res[10] == ["x", "y", "z"]
    assert res[11] == {"m1", "m2"}
    assert res[12] == [("one", 1.0), ("two", 2.0)]
    assert 990 <= res[13] <= 1000
    assert res[14:] == [1, 0]
    # Each key is on its owner.
    for key in [k[0], k[0] + ":l", k[1] + ":s", k[2], k[2] + ":z"]:
        assert cluster3.owner_of(key_slot(key)).client().exists(key) == 1, key


def test_multi_key_commands_with_hash_tags_run_on_the_owner(cluster3):
    rc = cluster3.client()
    assert rc.execute_command("MSET", "{u}a", "1", "{u}b", "2") is True
    assert rc.execute_command("MGET", "{u}a", "{u}b", "{u}missing") == ["1", "2", None]
    assert rc.execute_command("MSETNX", "{u}c", "3", "{u}a", "9") == 0
    rc.sadd("{u}s1", "x", "y")
    rc.sadd("{u}s2", "y", "z")
    assert rc.execute_command("SUNIONSTORE", "{u}s3", "{u}s1", "{u}s2") == 3
    assert rc.execute_command("RENAME", "{u}b", "{u}b2") is True
    assert rc.execute_command("DEL", "{u}a", "{u}b2", "{u}nope") == 2

    owner = cluster3.owner_of(key_slot("{u}"))
    plain = owner.client()
    assert plain.smembers("{u}s3") == {"x", "y", "z"}
    assert plain.exists("{u}a", "{u}b", "{u}b2") == 0
    for other in cluster3.nodes:
        if other is not owner:
            assert not [k for k in all_keys(other) if k.startswith("{u}")]


def test_keys_in_different_slots_get_crossslot_and_nothing_is_written(cluster3):
    n0 = cluster3.nodes[0]
    lo, hi = THREE_NODE_RANGES[0]
    # Two keys in different slots, both served by node 0, and a pair spanning two nodes.
    same_node = [key_in_slot_range("cs:a", lo, hi), key_in_slot_range("cs:b", lo, hi)]
    assert key_slot(same_node[0]) != key_slot(same_node[1])
    two_nodes = [same_node[0], key_in_slot_range("cs:c", *THREE_NODE_RANGES[2])]
    crossslot = "CROSSSLOT Keys in request don't hash to the same slot"

    for a, b in [same_node, two_nodes]:
        assert raw(n0, "MSET", a, "1", b, "2") == crossslot
        assert raw(n0, "MGET", a, b) == crossslot
        assert raw(n0, "DEL", a, b) == crossslot
        assert raw(n0, "SUNIONSTORE", a, a, b) == crossslot
        # Through redis-py: the plain client surfaces the server's error ...
        with pytest.raises(redis.ResponseError, match="^CROSSSLOT"):
            n0.client().mset({a: 1, b: 2})
        # ... and RedisCluster, sent to a chosen node, raises its CROSSSLOT exception.
        rc = cluster3.client()
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):
            rc.execute_command("MSET", a, "1", b, "2", target_nodes=rc.get_node(HOST, n0.port))
        for key in (a, b):
            assert cluster3.owner_of(key_slot(key)).client().exists(key) == 0


def redis_cli(port, *args):
    return subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_redis_cli_in_cluster_mode_follows_moved_to_every_node(cluster3):
    entry = cluster3.nodes[0]
    for i, (lo, hi) in enumerate(THREE_NODE_RANGES):
        key = key_in_slot_range(f"cli:{i}:", lo, hi)
        value = f"value-from-cli-{i}"
        out = redis_cli(entry.port, "-c", "SET", key, value)
        assert out.returncode == 0 and out.stdout.strip() == "OK", out
        out = redis_cli(entry.port, "-c", "GET", key)
        assert out.returncode == 0 and out.stdout.strip() == value, out
        owner = cluster3.nodes[i]
        assert owner.client().get(key) == value
        if owner is not entry:
            # Without -c the redirect itself is what the client sees.
            out = redis_cli(entry.port, "GET", key)
            assert out.stdout.strip() == f"MOVED {key_slot(key)} {owner.addr}", out


def test_redis_benchmark_in_cluster_mode_gets_no_error_and_no_redirect(cluster3):
    def counters():
        return [
            {k: int(v) for k, v in info_fields(n, "umcluster").items() if k.startswith(("umcluster_redirect", "umcluster_error"))}
            for n in cluster3.nodes
        ]

    before = counters()
    out = subprocess.run(
        [
            "redis-benchmark", "--cluster", "-h", HOST, "-p", str(cluster3.nodes[0].port),
            "-n", "20000", "-r", "100000", "-t", "set,get,incr,lpush", "-q",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Cluster has 3 master nodes" in text
    # redis-benchmark prints "Error from server ..." for error replies (and exits on any that is
    # not a redirect); MOVED/ASK would make it refetch the slots silently, so count them too.
    for bad in ("Error", "ERR", "MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN"):
        assert bad not in text, f"{bad!r} in redis-benchmark output:\n{text}"
    for test in ("SET", "GET", "INCR", "LPUSH"):
        assert f"{test}: " in text and "requests per second" in text, text
    assert counters() == before, "the benchmark's commands were redirected or refused"
    # Each master received its share, on keys it owns.
    where = assert_every_key_on_its_owner(cluster3)
    for node in cluster3.nodes:
        assert any(k.startswith("counter:") and where[k] is node for k in where), node.addr
        assert any(k.startswith("mylist") and where[k] is node for k in where), node.addr


def test_cluster_replies_describe_three_masters_and_full_coverage(cluster3):
    rc = cluster3.client()
    ports = [n.port for n in cluster3.nodes]

    # redis-py's own view, built from CLUSTER SLOTS at connect time.
    assert sorted(n.port for n in rc.get_primaries()) == sorted(ports)
    assert rc.get_replicas() == []
    slots_cache = rc.nodes_manager.slots_cache
    assert sorted(slots_cache) == list(range(SLOT_COUNT))
    for slot in (0, 5460, 5461, 10922, 10923, 16383):
        assert slots_cache[slot][0].port == cluster3.owner_of(slot).port

    ids = {}
    for node in cluster3.nodes:
        target = rc.get_node(HOST, node.port)
        ids[node.port] = rc.cluster_myid(target)
        assert len(ids[node.port]) == 40 and int(ids[node.port], 16) >= 0
    assert len(set(ids.values())) == 3

    expected_slots = {
        (lo, hi): {"primary": (HOST, p), "replicas": []} for (lo, hi), p in zip(THREE_NODE_RANGES, ports)
    }
    for node in cluster3.nodes:
        target = rc.get_node(HOST, node.port)
        # Every node gives the same answer.
        assert rc.cluster_slots(target_nodes=target) == expected_slots

        info = rc.cluster_info(target_nodes=target)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(SLOT_COUNT)
        assert info["cluster_slots_ok"] == str(SLOT_COUNT)
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"

        shards = rc.cluster_shards(target_nodes=target)
        assert len(shards) == 3
        by_range = {tuple(s["slots"][0]): s for s in shards}
        assert sorted(by_range) == THREE_NODE_RANGES
        for (lo, hi), p in zip(THREE_NODE_RANGES, ports):
            (shard_node,) = by_range[(lo, hi)]["nodes"]
            assert shard_node["port"] == p and shard_node["ip"] == HOST
            assert shard_node["role"] == "master" and shard_node["health"] == "online"
            assert shard_node["id"] == ids[p]

        nodes = node.client().cluster("NODES")
        assert set(nodes) == {f"{HOST}:{p}" for p in ports}
        for (lo, hi), p in zip(THREE_NODE_RANGES, ports):
            entry = nodes[f"{HOST}:{p}"]
            assert entry["node_id"] == ids[p]
            assert entry["master_id"] == "-"
            assert entry["slots"] == [[str(lo), str(hi)]]
            assert entry["connected"] is True
            flags = set(entry["flags"].split(","))
            assert flags == ({"myself", "master"} if p == node.port else {"master"})

    # RedisCluster's own CLUSTER NODES (random node) parses too.
    parsed = rc.cluster_nodes()
    assert {v["node_id"] for v in parsed.values()} == set(ids.values())

"""The client matrix (issue 7): every cluster client we claim to support runs the same scenario
against a real 3-node cluster built by `umcluster create`:

writes and reads across all slots, multi-key commands with a hash tag, a pipeline, a transaction on
one slot, a Lua script, sharded pub/sub, then a topology change pushed mid-run (an empty slot range
handed to another node with `UMCTL SETCLUSTER` and a higher epoch) followed by writes into that
range, which must land on the new owner.

Clients here: redis-py `RedisCluster` (sync and asyncio), ioredis `Cluster` and node-redis
`createCluster` (tests/node/matrix.js, run with the machine's Node.js). redis-rs (sync and async)
runs the same scenario in tests/redis_rs_cluster.rs; redis-cli -c and redis-benchmark --cluster are
in test_cluster_clients.py.
"""

import asyncio
import json
import os
import shutil
import subprocess
import time

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from conftest import HOST, THREE_NODE_RANGES, create_cluster, key_slot, raw

NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")
# Node 0's first slots: no key is written there before the move hands them to node 1.
EMPTY = (0, 99)


def moved_topology_pushes(cluster, epoch=2):
    """UMCTL arguments, per node, of the topology where node 1 also serves EMPTY."""
    (a_lo, a_hi), (b_lo, b_hi), (c_lo, c_hi) = THREE_NODE_RANGES
    assert a_lo == EMPTY[0]
    ranges = [
        [f"{EMPTY[1] + 1}-{a_hi}"],
        [f"{EMPTY[0]}-{EMPTY[1]}", f"{b_lo}-{b_hi}"],
        [f"{c_lo}-{c_hi}"],
    ]
    nodes = cluster.nodes
    pushes = []
    for i, node in enumerate(nodes):
        args = ["SETCLUSTER", "v2", str(epoch), "NOFLAG", "umcluster", node.addr, str(len(ranges[i])), *ranges[i]]
        args.append("PEER")
        for j, peer in enumerate(nodes):
            if j != i:
                args += [peer.addr, str(len(ranges[j])), *ranges[j]]
        pushes.append({"host": HOST, "port": node.port, "args": args})
    return pushes


def in_empty(key):
    return EMPTY[0] <= key_slot(key) <= EMPTY[1]


def keys_outside_empty(prefix, n):
    out, i = [], 0
    while len(out) < n:
        k = f"{prefix}{i}"
        if not in_empty(k):
            out.append(k)
        i += 1
    return out


def keys_inside_empty(prefix, n):
    out, i = [], 0
    while len(out) < n:
        k = f"{prefix}{i}"
        if in_empty(k):
            out.append(k)
        i += 1
    return out


@pytest.fixture
def cluster(servers):
    return create_cluster(servers)


def assert_moved_keys_on_new_owner(cluster, keys):
    new_owner = cluster.nodes[1]
    with new_owner.client() as c:
        assert all(c.exists(k) == 1 for k in keys)
    for other in (cluster.nodes[0], cluster.nodes[2]):
        assert raw(other, "DBSIZE") >= 0
        with other.client() as c:
            for k in keys:
                with pytest.raises(redis.ResponseError, match="^MOVED"):
                    c.get(k)


def test_redis_py_sync(cluster):
    rc = cluster.client()
    keys = keys_outside_empty("py:", 2000)
    for i, k in enumerate(keys):
        rc.set(k, i)
    assert [rc.get(k) for k in keys] == [str(i) for i in range(len(keys))]
    for k in keys[:300]:
        assert cluster.owner_of(key_slot(k)).client().get(k) is not None

    rc.mset_nonatomic({"{py-user}a": "1", "{py-user}b": "2"})
    assert rc.mget("{py-user}a", "{py-user}b") == ["1", "2"]
    assert rc.execute_command("MSET", "{py-user}c", "3", "{py-user}d", "4") in (True, "OK", b"OK")

    pipe = rc.pipeline()
    for k in keys[:100]:
        pipe.incr(k)
    assert pipe.execute() == [i + 1 for i in range(100)]

    owner = cluster.owner_of(key_slot("{py-tx}"))
    with owner.client() as c:  # RedisCluster has no MULTI; a one-slot transaction on the owner
        tx = c.pipeline(transaction=True)
        tx.set("{py-tx}n", 41)
        tx.incr("{py-tx}n")
        assert tx.execute() == [True, 42]

    assert rc.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "{py-tx}lua", 5) == 5

    sub = rc.pubsub()
    sub.ssubscribe("py-chan")
    assert rc.spublish("py-chan", "hello") == 1
    deadline = time.monotonic() + 5
    msg = None
    while time.monotonic() < deadline and not (msg and msg["type"] == "smessage"):
        msg = sub.get_sharded_message(timeout=0.5)  # ignore_subscribe_messages=True loses it (redis-py 5.2)
    assert msg and msg["data"] == "hello", msg
    sub.close()

    for push in moved_topology_pushes(cluster):
        assert raw(cluster.nodes[[n.port for n in cluster.nodes].index(push["port"])], "UMCTL", *push["args"]) == "OK"
    moved = keys_inside_empty("py-moved:", 20)
    for k in moved:
        rc.set(k, "after")
    assert [rc.get(k) for k in moved] == ["after"] * len(moved)
    assert_moved_keys_on_new_owner(cluster, moved)
    assert [rc.get(k) for k in keys[100:400]] == [str(i) for i in range(100, 400)]


def test_redis_py_asyncio(cluster):
    async def scenario():
        rc = AsyncRedisCluster(host=HOST, port=cluster.nodes[0].port, decode_responses=True)
        try:
            keys = keys_outside_empty("apy:", 1000)
            await asyncio.gather(*(rc.set(k, i) for i, k in enumerate(keys)))
            got = await asyncio.gather(*(rc.get(k) for k in keys))
            assert got == [str(i) for i in range(len(keys))]
            await rc.mset_nonatomic({"{apy}a": "1", "{apy}b": "2"})
            assert await rc.mget("{apy}a", "{apy}b") == ["1", "2"]
            pipe = rc.pipeline()
            for k in keys[:50]:
                pipe.incr(k)
            assert await pipe.execute() == [i + 1 for i in range(50)]
            assert await rc.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "{apy}lua", 7) == 7
            for push in moved_topology_pushes(cluster):
                node = next(n for n in cluster.nodes if n.port == push["port"])
                assert raw(node, "UMCTL", *push["args"]) == "OK"
            moved = keys_inside_empty("apy-moved:", 20)
            for k in moved:
                await rc.set(k, "after")
            assert await asyncio.gather(*(rc.get(k) for k in moved)) == ["after"] * 20
            return moved
        finally:
            await rc.aclose()

    moved = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert_moved_keys_on_new_owner(cluster, moved)


def node_available():
    return shutil.which("node") and os.path.isdir(os.path.join(NODE_DIR, "node_modules", "ioredis"))


@pytest.mark.parametrize("client", ["ioredis", "node-redis"])
def test_node_clients(cluster, client):
    if not node_available():
        pytest.fail("Node.js clients are not installed: run `make node-deps` (npm ci in tests/node)")
    plan = {
        "seeds": [[HOST, cluster.nodes[0].port]],
        "empty": list(EMPTY),
        "pushes": moved_topology_pushes(cluster),
        "new_owner": [HOST, cluster.nodes[1].port],
    }
    out = subprocess.run(
        ["node", os.path.join(NODE_DIR, "matrix.js"), client, json.dumps(plan)],
        capture_output=True, text=True, timeout=90,
    )
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert out.returncode == 0 and lines, f"{client} failed:\n{out.stdout}\n{out.stderr}"
    result = json.loads(lines[-1])
    assert result["ok"] and result["keys"] == 2000, result

"""Adopting a running standalone redis-server that already holds data.

A plain redis-server (no module) holds a few hundred keys of every common type, some with a TTL.
The module is then loaded at runtime (`MODULE LOAD`). Until a topology arrives, keyed commands
get `-CLUSTERDOWN The cluster is down` (routing.md rule 2) while keyless ones still run. Once the
node receives a topology giving it every slot -- pushed by hand with `UMCTL SETCLUSTER`, or by
`umcluster create` with that single node, which must accept a node holding data -- every
pre-existing key is served through `RedisCluster` unchanged, TTLs included, and nothing was copied
or rewritten (`DBSIZE` and `DEBUG DIGEST` are unchanged).
"""

import time

import pytest

from conftest import SLOT_COUNT, module_path, raw, umcluster


def populate(r):
    """Writes ~400 keys of several types; returns the expected content."""
    expected = {}
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"str:ttl:{i}", f"s{i}", ex=1000 + i)
        expected[f"str:ttl:{i}"] = ("string", f"s{i}")
        pipe.set(f"str:{i}", f"plain{i}")
        expected[f"str:{i}"] = ("string", f"plain{i}")
    for i in range(50):
        h = {f"f{j}": f"{i}-{j}" for j in range(5)}
        pipe.hset(f"hash:{i}", mapping=h)
        expected[f"hash:{i}"] = ("hash", h)
        items = [f"item{j}" for j in range(i % 7 + 1)]
        pipe.rpush(f"list:{i}", *items)
        expected[f"list:{i}"] = ("list", items)
        members = {f"m{j}" for j in range(i % 5 + 1)}
        pipe.sadd(f"set:{i}", *members)
        expected[f"set:{i}"] = ("set", members)
        scores = {f"z{j}": float(j * i) for j in range(4)}
        pipe.zadd(f"zset:{i}", scores)
        expected[f"zset:{i}"] = ("zset", scores)
    for i in range(0, 50, 5):
        pipe.expire(f"hash:{i}", 2000)
    pipe.execute()
    return expected


def read_value(client, key, kind):
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return dict(client.zrange(key, 0, -1, withscores=True))
    raise AssertionError(kind)


def adopt_with_setcluster(server):
    assert raw(server, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "adopt", server.addr, "1", "0-16383") == "OK"


def adopt_with_umcluster_create(server):
    out = umcluster("create", "--name", "adopt", server.addr)
    assert out.returncode == 0, f"umcluster create refused a single node holding data:\n{out.stdout}{out.stderr}"
    assert "16384" in out.stdout


@pytest.mark.parametrize("adopt", [adopt_with_setcluster, adopt_with_umcluster_create], ids=["setcluster", "umcluster-create"])
def test_running_server_with_data_is_adopted_without_touching_its_keys(servers, adopt):
    server = servers.start(with_module=False)
    plain = server.client()
    expected = populate(plain)
    dbsize = plain.dbsize()
    assert dbsize == len(expected) == 400
    digest = plain.execute_command("DEBUG", "DIGEST")
    ttls_before = {k: plain.pttl(k) for k in expected if k.startswith(("str:ttl:", "hash:"))}
    loaded_at = time.monotonic()

    assert plain.execute_command("MODULE", "LOAD", module_path()) in (True, "OK")
    assert "umcluster" in [m["name"] for m in plain.module_list()]

    # Loaded, not configured: keyed commands are refused, keyless ones run.
    for cmd in (["GET", "str:1"], ["SET", "str:1", "overwritten"], ["HGETALL", "hash:1"], ["DEL", "str:2"]):
        assert raw(server, *cmd) == "CLUSTERDOWN The cluster is down", cmd
    assert raw(server, "DBSIZE") == dbsize
    assert raw(server, "PING") == "PONG"
    assert raw(server, "UMCTL", "GETEPOCH") == 0
    assert raw(server, "UMCTL", "READY") == 0
    assert "cluster_state:fail" in raw(server, "CLUSTER", "INFO")

    adopt(server)

    assert raw(server, "UMCTL", "READY") == 1
    info = raw(server, "CLUSTER", "INFO")
    assert "cluster_state:ok" in info and f"cluster_slots_assigned:{SLOT_COUNT}" in info
    assert umcluster("check", server.addr).returncode == 0

    rc = server.cluster_client()
    assert [n.port for n in rc.get_primaries()] == [server.port]
    for key, (kind, value) in expected.items():
        assert rc.type(key) == kind, key
        assert read_value(rc, key, kind) == value, key
    elapsed_ms = (time.monotonic() - loaded_at) * 1000
    for key, before in ttls_before.items():
        after = rc.pttl(key)
        assert before - elapsed_ms - 1000 <= after <= before, f"{key}: PTTL {before} -> {after}"
    for i in range(1, 50):
        if i % 5:
            assert rc.ttl(f"hash:{i}") == -1, "keys without a TTL must not gain one"
    assert rc.ttl("str:7") == -1

    # Nothing was copied, dropped or rewritten: same key count, same dataset digest.
    assert plain.dbsize() == dbsize
    assert plain.execute_command("DEBUG", "DIGEST") == digest

    # And the adopted node serves writes as a cluster node.
    assert rc.set("after:adoption", "yes") and rc.get("after:adoption") == "yes"
    assert rc.incr("str:ttl:counter") == 1

"""A configured node looks like a cluster node to tools that ask INFO (issue 7).

Covers: `cluster_enabled:1` in every INFO form that includes the `# Cluster` section once a
topology is accepted (and `0` before); the rest of INFO keeps the server's own fields; INFO inside
MULTI, from a script, over RESP3; `redis-cli --cluster check` and `info` succeed with the right
masters, slots and key counts; the gossip-based `redis-cli --cluster` subcommands fail with a clear
message naming the umcluster tool.
"""

import re
import subprocess

import pytest

from conftest import HOST, RawConnection, create_cluster, key_slot, raw, wait_until

CLUSTER_FORMS = [
    (),
    ("cluster",),
    ("all",),
    ("everything",),
    ("default",),
    ("server", "cluster", "memory"),
    ("CLUSTER",),
]


def info_text(server, *sections):
    with server.client() as c:
        return c.execute_command("INFO", *sections)


def raw_info(server, *sections):
    """INFO as the raw text the server sent."""
    out = subprocess.run(
        ["redis-cli", "-p", str(server.port), "INFO", *sections], capture_output=True, text=True, timeout=10
    )
    return out.stdout


# Statistics that count the commands run in between (the INFO, UMCTL and CONFIG calls themselves).
VOLATILE = ("cmdstat_", "errorstat_", "latency_percentiles_usec_")


def field_names(text):
    return [
        line.split(":", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#") and not line.startswith(VOLATILE)
    ]


@pytest.fixture
def node(servers):
    return servers.start()


def configure(node):
    assert raw(node, "UMCTL", "SETCLUSTER", "v2", 1, "NOFLAG", "db", node.addr, 1, "0-16383") == "OK"


@pytest.mark.parametrize("sections", CLUSTER_FORMS, ids=lambda s: " ".join(s) or "(none)")
def test_cluster_enabled_flips_only_once_a_topology_is_accepted(node, sections):
    before = raw_info(node, *sections)
    assert "cluster_enabled:0" in before
    configure(node)
    after = raw_info(node, *sections)
    assert "cluster_enabled:1" in after
    assert "cluster_enabled:0" not in after
    # The same sections and fields in the same order: only the one value differs.
    assert re.findall(r"^# \w+", before, re.M) == re.findall(r"^# \w+", after, re.M)
    assert field_names(before) == field_names(after)


def test_sections_without_cluster_are_the_servers_own(node):
    configure(node)
    text = raw_info(node, "keyspace")
    assert "cluster_enabled" not in text
    assert raw_info(node, "cluster") == "# Cluster\ncluster_enabled:1\n\n" or raw_info(node, "cluster").startswith(
        "# Cluster\ncluster_enabled:1"
    )


def test_module_section_is_listed_with_everything_and_by_name(node):
    configure(node)
    assert "# umcluster" in raw_info(node, "everything")
    assert "umcluster_epoch:1" in raw_info(node, "umcluster")


def test_info_in_multi_in_scripts_and_over_resp3(node):
    configure(node)
    with node.client() as c:
        pipe = c.pipeline(transaction=True)
        pipe.info("cluster")
        pipe.set("foo", "bar")
        info, ok = pipe.execute()
        assert info["cluster_enabled"] == 1 and ok is True
        assert "cluster_enabled:1" in c.eval("return redis.call('INFO', 'cluster')", 0)
    with node.client(protocol=3) as c3:
        assert c3.info("cluster")["cluster_enabled"] == 1


def test_unconfigured_node_keeps_the_servers_info(node):
    assert info_text(node, "cluster")["cluster_enabled"] == 0
    assert raw(node, "INFO", "cluster").count("cluster_enabled:0") == 1


# ---------------------------------------------------------------------------------------------
# redis-cli --cluster
# ---------------------------------------------------------------------------------------------


def redis_cli_cluster(*args, timeout=30, answer="yes\n"):
    """Runs `redis-cli --cluster ...`, answering its prompts with `answer`."""
    out = subprocess.run(
        ["redis-cli", "--no-raw", "--cluster", *args], capture_output=True, text=True, timeout=timeout,
        input=answer,
    )
    return out.returncode, re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)


@pytest.fixture
def loaded_cluster(servers):
    c = create_cluster(servers)
    rc = c.client()
    for i in range(300):
        rc.set(f"cli-key-{i}", i)
    return c


def test_redis_cli_cluster_check_and_info_see_three_masters(loaded_cluster):
    nodes = loaded_cluster.nodes
    for seed in nodes:
        code, out = redis_cli_cluster("check", seed.addr)
        assert code == 0, out
        assert "[OK] All nodes agree about slots configuration." in out
        assert "[OK] All 16384 slots covered." in out
        assert out.count("M: ") == 3
        for n in nodes:
            assert n.addr in out
    code, out = redis_cli_cluster("info", nodes[1].addr)
    assert code == 0, out
    assert "[OK] 300 keys in 3 masters." in out
    total_slots = 0
    for n in nodes:
        line = next(l for l in out.splitlines() if l.startswith(n.addr))
        keys, slots = re.search(r"-> (\d+) keys \| (\d+) slots", line).groups()
        assert int(keys) == n.client().dbsize()
        total_slots += int(slots)
    assert total_slots == 16384


def test_redis_cli_cluster_changes_fail_and_point_at_the_umcluster_tool(loaded_cluster, servers):
    nodes = loaded_cluster.nodes
    target_id = raw(nodes[0], "CLUSTER", "MYID")
    code, out = redis_cli_cluster(
        "reshard", nodes[0].addr, "--cluster-from", "all", "--cluster-to", target_id,
        "--cluster-slots", "10", "--cluster-yes",
    )
    assert code != 0 and "umcluster admin tool" in out, out
    code, out = redis_cli_cluster(
        "rebalance", nodes[0].addr, "--cluster-weight", f"{target_id}=3", "--cluster-yes"
    )
    assert code != 0 and "umcluster admin tool" in out, out
    fresh = servers.start()
    code, out = redis_cli_cluster("add-node", fresh.addr, nodes[0].addr)
    assert code != 0 and "not configured as a cluster node" in out, out
    code, out = redis_cli_cluster("create", fresh.addr, nodes[0].addr, nodes[1].addr, "--cluster-yes")
    assert code != 0 and ("not configured as a cluster node" in out or "not empty" in out), out
    # A fresh node configured alone (a cluster of one, no slots) gets as far as MEET.
    assert raw(fresh, "UMCTL", "SETCLUSTER", "v2", 1, "NOFLAG", "solo", fresh.addr, 0) == "OK"
    code, out = redis_cli_cluster("add-node", fresh.addr, nodes[0].addr)
    assert code != 0, out
    # Nothing changed: the cluster still checks clean and every key is where it was.
    code, out = redis_cli_cluster("check", nodes[0].addr)
    assert code == 0 and "[OK] All 16384 slots covered." in out, out
    assert sum(n.client().dbsize() for n in nodes) == 300
    wait_until(lambda: raw(nodes[0], "UMCTL", "GETEPOCH") == 1, timeout=1, what="epoch unchanged")


def test_redis_cli_cluster_fix_on_uncovered_slots_fails_pointing_at_the_tool(servers):
    a, b = servers.start(), servers.start()
    for n, other in ((a, b), (b, a)):
        assert raw(n, "UMCTL", "SETCLUSTER", "v2", 1, "NOFLAG", "db", n.addr, 1,
                   "0-8191" if n is a else "8192-16000", "PEER", other.addr, 1,
                   "8192-16000" if n is a else "0-8191") == "OK"
    code, out = redis_cli_cluster("check", a.addr)
    assert code != 0 and "Not all 16384 slots are covered" in out, out
    code, out = redis_cli_cluster("fix", a.addr, "--cluster-yes", timeout=60)
    assert code != 0 and "umcluster admin tool" in out, out


def test_countkeysinslot_and_getkeysinslot_on_a_loaded_node(node):
    """COUNTKEYSINSLOT counts every key of the slot (in the caller's database); GETKEYSINSLOT
    returns up to `count` of them, all of the slot's when it has fewer, and stops early."""
    configure(node)
    # 40,000 keys: about 2.4 per slot; slot 12182 ("foo") gets 50 more by hash tag.
    assert raw(node, "DEBUG", "POPULATE", "40000", "k") == "OK"
    c = node.client()
    c.mset({"{foo}%d" % i: i for i in range(50)})
    in_slot = [k for k in c.scan_iter(count=5000) if key_slot(k) == 12182]
    assert len(in_slot) >= 50
    assert raw(node, "CLUSTER", "COUNTKEYSINSLOT", "12182") == len(in_slot)
    some = raw(node, "CLUSTER", "GETKEYSINSLOT", "12182", "7")
    assert len(some) == 7 and set(some) <= set(in_slot)
    everything = raw(node, "CLUSTER", "GETKEYSINSLOT", "12182", "1000")
    assert sorted(everything) == sorted(in_slot)
    assert raw(node, "CLUSTER", "GETKEYSINSLOT", "12182", "0") == []
    # Another database has its own keys.
    assert node.client(db=2).execute_command("CLUSTER", "COUNTKEYSINSLOT", "12182") == 0


def test_countkeysinslot_counts_in_slices_and_serves_other_clients_meanwhile(node):
    """Counting a slot's keys visits the whole keyspace (about 11 s for 10 M keys): the module
    blocks the asking client and counts in slices of 2 ms, so others are served in between.
    Inside MULTI or a script the client cannot block and the count is done at once."""
    configure(node)
    assert raw(node, "DEBUG", "POPULATE", "1000000", "k") == "OK"
    slot = key_slot("k:7")
    with RawConnection(node.port) as counting, RawConnection(node.port) as other:
        counting_id = counting.call("CLIENT", "ID")
        counting.send("CLUSTER", "COUNTKEYSINSLOT", str(slot))
        # Served while the count is in progress: the counting client shows as blocked.
        def blocked():
            for line in other.call("CLIENT", "LIST", "ID", str(counting_id)).splitlines():
                return "flags=b" in line
            return False
        wait_until(blocked, timeout=30, what="the counting client blocked")
        assert other.call("PING") == "PONG"
        count = counting.read()
        # The same count at once (another code path: one scan) inside a transaction and a script.
        assert other.call("MULTI") == "OK"
        assert other.call("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == "QUEUED"
        assert other.call("EXEC") == [count]
        script = "return redis.call('CLUSTER', 'COUNTKEYSINSLOT', ARGV[1])"
        assert other.call("EVAL", script, "0", str(slot)) == count
    assert 0 < count < 1000
    # Several counts at once, and one whose client went away, all end.
    conns = [RawConnection(node.port) for _ in range(3)]
    for c in conns:
        c.send("CLUSTER", "COUNTKEYSINSLOT", str(slot))
    conns[0].close()
    assert [c.read() for c in conns[1:]] == [count, count]
    for c in conns[1:]:
        c.close()
    wait_until(lambda: node.client().info("clients")["blocked_clients"] == 0, timeout=30,
               what="no client left blocked")

"""The `umcluster` admin tool: `create` and `check` against real nodes.

`create` splits the slots over empty nodes like `redis-cli --cluster create` and pushes each node
its view; it refuses (non-zero exit, a message naming the node, nothing pushed) when one of several
nodes holds keys, when a node is unreachable, or when a node lacks the module. `check` exits 0 only
when every node agrees on the epoch and the table and all 16384 slots are covered, and fails once
one node is forced onto a different table.
"""

from conftest import HOST, THREE_NODE_RANGES, free_port, raw, umcluster


def output(proc):
    return proc.stdout + proc.stderr


def epochs(nodes):
    return [raw(n, "UMCTL", "GETEPOCH") for n in nodes]


def test_create_on_empty_nodes_then_check_reports_all_slots_covered(servers):
    nodes = servers.start_many(3)
    out = umcluster("create", "--name", "shop", *[n.addr for n in nodes])
    assert out.returncode == 0, output(out)
    for n, (lo, hi) in zip(nodes, THREE_NODE_RANGES):
        assert f"{n.addr} -> slots {lo}-{hi}" in out.stdout
    assert epochs(nodes) == [1, 1, 1]
    for n, (lo, hi) in zip(nodes, THREE_NODE_RANGES):
        info = raw(n, "INFO", "umcluster")
        assert "umcluster_cluster_name:shop" in info
        assert f"umcluster_slots_owned:{hi - lo + 1}" in info
        assert "cluster_state:ok" in raw(n, "CLUSTER", "INFO")

    for seed in nodes:
        check = umcluster("check", seed.addr)
        assert check.returncode == 0, output(check)
        assert "[OK] All nodes agree about slots configuration." in check.stdout
        assert "[OK] All 16384 slots covered." in check.stdout
        assert "[ERR]" not in output(check)
        for n in nodes:
            assert n.addr in check.stdout

    # Running create again re-pushes with a newer epoch; the cluster stays healthy.
    again = umcluster("create", "--name", "shop", *[n.addr for n in nodes])
    assert again.returncode == 0, output(again)
    assert epochs(nodes) == [2, 2, 2]
    assert umcluster("check", nodes[1].addr).returncode == 0


def test_create_refuses_several_nodes_when_one_holds_keys(servers):
    empty, loaded = servers.start_many(2)
    # An unconfigured node refuses keyed commands; DEBUG POPULATE has no key argument.
    assert raw(loaded, "DEBUG", "POPULATE", "3") == "OK"
    out = umcluster("create", empty.addr, loaded.addr)
    assert out.returncode != 0
    assert loaded.addr in output(out), output(out)
    assert "3 keys" in output(out)
    assert epochs([empty, loaded]) == [0, 0], "nothing may be pushed when create refuses"
    assert loaded.client().dbsize() == 3


def test_create_fails_on_an_unreachable_node(servers):
    nodes = servers.start_many(2)
    nowhere = f"{HOST}:{free_port()}"  # nobody listens there
    out = umcluster("create", nodes[0].addr, nowhere, nodes[1].addr)
    assert out.returncode != 0
    assert nowhere in output(out), output(out)
    assert epochs(nodes) == [0, 0]


def test_create_fails_on_a_node_without_the_module(servers):
    with_module = servers.start()
    plain = servers.start(with_module=False)
    out = umcluster("create", with_module.addr, plain.addr)
    assert out.returncode != 0
    assert plain.addr in output(out) and "module" in output(out), output(out)
    assert epochs([with_module]) == [0]


def test_check_fails_when_one_node_is_forced_onto_another_table(servers):
    nodes = servers.start_many(3)
    assert umcluster("create", *[n.addr for n in nodes]).returncode == 0
    assert umcluster("check", nodes[0].addr).returncode == 0

    # Node 2 is told (FORCE, same epoch) that node 0 owns everything node 1 had.
    a, b, c = nodes
    forced = raw(
        c, "UMCTL", "SETCLUSTER", "v2", "1", "FORCE", "umcluster",
        c.addr, "1", "10923-16383", "PEER", a.addr, "1", "0-10922", b.addr, "0",
    )
    assert forced == "OK"
    for seed in nodes:
        check = umcluster("check", seed.addr)
        assert check.returncode != 0, output(check)
        assert "disagrees" in check.stdout and c.addr in check.stdout

    # Back in agreement, then a newer epoch on one node only: still a problem.
    assert umcluster("create", *[n.addr for n in nodes]).returncode == 0
    assert umcluster("check", a.addr).returncode == 0
    bumped = raw(
        b, "UMCTL", "SETCLUSTER", "v2", "9", "NOFLAG", "umcluster",
        b.addr, "1", "5461-10922", "PEER", a.addr, "1", "0-5460", c.addr, "1", "10923-16383",
    )
    assert bumped == "OK"
    check = umcluster("check", a.addr)
    assert check.returncode != 0 and "epoch 9" in check.stdout, output(check)


def test_check_fails_when_slots_are_unassigned(servers):
    a, b = servers.start_many(2)
    for me, other, mine, theirs in [(a, b, "0-100", "101-16000"), (b, a, "101-16000", "0-100")]:
        reply = raw(me, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "db", me.addr, "1", mine, "PEER", other.addr, "1", theirs)
        assert reply == "OK"
    check = umcluster("check", a.addr)
    assert check.returncode != 0
    assert "only 16001 of 16384 slots are assigned" in check.stdout, output(check)
    assert "[OK] All nodes agree about slots configuration." in check.stdout


def test_check_fails_on_an_unreachable_seed():
    nowhere = f"{HOST}:{free_port()}"
    check = umcluster("check", nowhere)
    assert check.returncode != 0
    assert nowhere in output(check)

"""Restarts with the `config-file` module argument (replication.md "Restarts").

A node given `config-file <path>` saves every accepted SETCLUSTER/SETREPL there and replays it at
load: after a kill -9 and a restart on the same port it routes with the same table and epochs from
the very first command of a fresh connection (before any module command has run, so before client
identity is calibrated), a replica follows its master again, and a stale push is still refused.
A corrupt or unreadable file leaves the node unconfigured and alive; a file that cannot be written
refuses the push with `-ERR_CONFIG_WRITE`.
"""

import os

from conftest import Err, RawConnection, info_fields, key_in_slot_range, raw, wait_until
from test_replica import wait_replica_synced


def start_with_config(servers, path):
    return servers.start(extra_args=["config-file", path])


def config_path(servers, name):
    return os.path.join(servers.workdir, name)


def push_two_masters(a, b, epoch):
    """a serves 0-8191, b serves 8192-16383."""
    for me, other, mine, theirs in ((a, b, "0-8191", "8192-16383"), (b, a, "8192-16383", "0-8191")):
        assert raw(me, "UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", "restart",
                   me.addr, "1", mine, "PEER", other.addr, "1", theirs) == "OK"


def test_restart_keeps_table_and_epoch(servers):
    pa, pb = config_path(servers, "a.json"), config_path(servers, "b.json")
    a, b = start_with_config(servers, pa), start_with_config(servers, pb)
    push_two_masters(a, b, 7)
    local_key = key_in_slot_range("loc", 0, 8191)
    remote_key = key_in_slot_range("rem", 8192, 16383)
    assert raw(a, "SET", local_key, "v") == "OK"
    nodes_before = raw(a, "CLUSTER", "NODES")
    assert os.path.exists(pa)

    a.restart()

    # The first command on a fresh connection, before any module command ran on this server.
    with RawConnection(a.port) as c:
        moved = c.call("GET", remote_key)
        assert isinstance(moved, Err) and moved.startswith("MOVED ") and moved.endswith(b.addr), moved
        assert c.call("GET", local_key) is None  # owned (data was not saved: SIGKILL, no RDB)
        assert c.call("SET", local_key, "again") == "OK"
    # ASKING does not open a slot that is not importing; READONLY does not serve another master's.
    with RawConnection(a.port) as c:
        assert c.call("ASKING") == "OK"
        assert c.call("GET", remote_key).startswith("MOVED ")
        assert c.call("READONLY") == "OK"
        assert c.call("GET", remote_key).startswith("MOVED ")
    assert raw(a, "UMCTL", "GETEPOCH") == 7
    assert raw(a, "CLUSTER", "NODES") == nodes_before

    # A stale push is refused after the restart; a newer one is accepted and saved.
    stale = raw(a, "UMCTL", "SETCLUSTER", "v2", "7", "NOFLAG", "restart", a.addr, "1", "0-16383")
    assert stale == Err("OLD_EPOCH")
    push_two_masters(a, b, 8)
    a.restart()
    assert raw(a, "UMCTL", "GETEPOCH") == 8


def test_replica_restart_follows_its_master_again(servers):
    pm, pr = config_path(servers, "m.json"), config_path(servers, "r.json")
    m, r = start_with_config(servers, pm), start_with_config(servers, pr)
    assert raw(m, "UMCTL", "SETCLUSTER", "v2", "3", "NOFLAG", "restart", m.addr, "1", "0-16383") == "OK"
    assert raw(r, "UMCTL", "SETCLUSTER", "v2", "3", "NOFLAG", "restart",
               "PEER", m.addr, "1", "0-16383") == "OK"
    assert raw(m, "UMCTL", "SETREPL", "2", "NOFLAG", "master", "restart", m.addr, "1", r.addr, r.addr) == "OK"
    assert raw(r, "UMCTL", "SETREPL", "2", "NOFLAG", "replica", "restart", r.addr, "1", m.addr, m.addr) == "OK"
    wait_replica_synced(m, r)

    r.restart()
    fields = info_fields(r, "replication")
    assert fields["role"] == "slave" and fields["master_port"] == str(m.port)
    # Writes the master takes while the replica is back all arrive (the master link is obeyed
    # even before client identity is calibrated).
    mc = m.client()
    for i in range(300):
        mc.set(f"k{i}", i)
        mc.hset(f"h{i % 7}", i, i)
    wait_replica_synced(m, r)
    assert raw(r, "DEBUG", "DIGEST") == raw(m, "DEBUG", "DIGEST")
    with RawConnection(r.port) as c:
        assert c.call("GET", "k1").startswith("MOVED ")
        assert c.call("READONLY") == "OK"
        assert c.call("GET", "k1") == "1"
        assert c.call("SET", "k1", "x").startswith("MOVED ")
    assert raw(r, "UMCTL", "GETEPOCH") == 3
    assert raw(r, "UMCTL", "SETREPL", "2", "NOFLAG", "replica", "restart", r.addr, "1",
               m.addr, m.addr) == Err("OLD_EPOCH")


def test_corrupt_config_file_starts_unconfigured(servers):
    path = config_path(servers, "bad.json")
    with open(path, "w") as f:
        f.write('{"version":1,"setcluster":["v2","oops"')
    s = start_with_config(servers, path)
    assert raw(s, "PING") == "PONG"
    assert raw(s, "GET", "x").startswith("CLUSTERDOWN")
    assert raw(s, "UMCTL", "GETEPOCH") == 0
    assert "starting unconfigured" in s.log_tail()
    # The control plane's next push repairs it, and the file with it.
    assert raw(s, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "c", s.addr, "1", "0-16383") == "OK"
    s.restart()
    assert raw(s, "UMCTL", "GETEPOCH") == 1
    assert raw(s, "GET", "x") is None


def test_unwritable_config_file_refuses_the_push(servers):
    blocker = config_path(servers, "not-a-dir")
    with open(blocker, "w") as f:
        f.write("a file where a directory should be")
    s = start_with_config(servers, os.path.join(blocker, "node.json"))
    assert raw(s, "PING") == "PONG"
    reply = raw(s, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "c", s.addr, "1", "0-16383")
    assert isinstance(reply, Err) and reply.startswith("ERR_CONFIG_WRITE"), reply
    assert raw(s, "UMCTL", "GETEPOCH") == 0
    assert info_fields(s, "umcluster")["umcluster_config_write_failed"] == "1"
    wait_until(lambda: "cannot save the config file" in s.log_tail(), what="log line")

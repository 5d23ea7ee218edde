"""Hardening: nothing a client sends can crash the server or corrupt the topology (issue 6).

- Fault injection: the debug-only commands `umcluster.debug-panic` (a handler that panics while it
  holds the module state) and `umcluster.debug-filter-panic` (a command name that makes the command
  filter panic) are compiled into debug builds only. The server must survive, reply an error, keep
  its table, and keep working (the state is released: a later SETCLUSTER is accepted).
- Bad-input matrix: thousands of random and mutated UMCTL / CLUSTER / ASKING / READONLY / READWRITE
  commands (wrong arity, huge numbers, binary junk, 1 MB arguments, empty strings) against a
  configured node. Every reply is a value or an error; the server never dies; the table
  (`UMCTL GETEPOCH`, `CLUSTER SLOTS`, `UMCTL INFOREPL`) changes only when the reply says the command
  was accepted. The RNG is seeded (HARDENING_SEED, default 6) so a failure reproduces.
- Per-connection state does not grow: ASKING in a loop keeps `tracked_connections` at one entry.
"""

import os
import random

import pytest

from conftest import HOST, Err, RawConnection, info_fields, key_in_slot_range, key_slot, raw

SEED = int(os.environ.get("HARDENING_SEED", "6"))
ROUNDS = int(os.environ.get("HARDENING_ROUNDS", "3000"))
LOCAL_KEY = key_in_slot_range("local:", 0, 8191)
REMOTE_KEY = key_in_slot_range("remote:", 8192, 16383)


def peer_of(node, delta=1):
    port = node.port + delta if node.port + delta <= 65535 else node.port - delta
    return f"{HOST}:{port}"


def table(conn):
    """What a refused command must leave as it was."""
    return (
        conn.call("UMCTL", "GETEPOCH"),
        conn.call("CLUSTER", "SLOTS"),
        conn.call("UMCTL", "INFOREPL"),
    )


def alive(node):
    assert node.proc.poll() is None, f"redis-server exited with {node.proc.returncode}"
    assert raw(node, "PING") == "PONG"


@pytest.fixture
def configured(servers):
    node = servers.start()
    peer = peer_of(node)
    assert raw(node, "UMCTL", "SETCLUSTER", "v2", "5", "NOFLAG", "db", node.addr, "1", "0-8191",
               "PEER", peer, "1", "8192-16383") == "OK"
    assert raw(node, "SET", LOCAL_KEY, "here") == "OK"
    node.peer = peer
    return node


# ---------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------


def test_panic_in_a_command_handler_is_an_error_and_the_state_survives(configured):
    node = configured
    with RawConnection(node.port) as c:
        before = table(c)
        reply = c.call("umcluster.debug-panic")
        assert isinstance(reply, Err), reply
        assert "internal error" in reply and "injected" in reply
        # Same connection, then a new one: the server is alive and the table unchanged.
        assert c.call("PING") == "PONG"
        assert table(c) == before
        assert c.call("GET", REMOTE_KEY) == Err(f"MOVED {key_slot(REMOTE_KEY)} {node.peer}")
        # The state was released by the unwind: a mutation still goes through.
        assert c.call("UMCTL", "SETCLUSTER", "v2", "6", "NOFLAG", "db", node.addr, "1", "0-16383") == "OK"
        assert c.call("UMCTL", "GETEPOCH") == 6
        assert c.call("GET", REMOTE_KEY) is None
    assert "internal error in umcluster.debug-panic" in node.log_tail(200)
    alive(node)


def test_panic_in_the_command_filter_leaves_the_command_to_the_server(configured):
    node = configured
    with RawConnection(node.port) as c:
        before = table(c)
        for _ in range(3):
            reply = c.call("umcluster.debug-filter-panic", "x")
            # The filter gave up without touching the command: the server answers it (unknown).
            assert isinstance(reply, Err) and "unknown command" in reply, reply
        assert table(c) == before
        # The filter still routes the next command: the state borrow was released.
        assert c.call("GET", REMOTE_KEY) == Err(f"MOVED {key_slot(REMOTE_KEY)} {node.peer}")
        assert c.call("GET", LOCAL_KEY) == "here"
    assert "internal error in the command filter" in node.log_tail(200)
    alive(node)


# ---------------------------------------------------------------------------------------------
# Bad-input matrix
# ---------------------------------------------------------------------------------------------


def junk(rng):
    """One hostile argument."""
    kind = rng.randrange(12)
    if kind == 0:
        return b""
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    if kind == 2:
        return str(rng.choice([-1, 0, 16383, 16384, 65535, 65536, 2**31, 2**63 - 1, 2**63, 2**64, 2**64 + 1,
                               -(2**63), 10**40])).encode()
    if kind == 3:
        lo, hi = rng.randrange(-5, 17000), rng.randrange(-5, 17000)
        return f"{lo}-{hi}".encode()
    if kind == 4:
        return rng.choice([b"v2", b"V1", b"NOFLAG", b"FORCE", b"COMPRESS", b"force,compress", b"PEER", b"CONFIG",
                           b"migrating", b"importing", b"master", b"db", b"0-16383", b"1", b"-", b"--", b"0-"])
    if kind == 5:
        return rng.choice([b"127.0.0.1:0", b"127.0.0.1:65536", b"[::1]:1", b"[", b"]:1", b":", b"host:",
                           b"127.0.0.1:99999999999999999999"])
    if kind == 6:
        return b"\x00" * rng.randrange(1, 10) + b"\r\n*1\r\n$4\r\nPING\r\n"
    if kind == 7 and rng.random() < 0.02:
        return bytes([rng.randrange(256)]) * (1 << 20)  # 1 MB
    if kind == 8:
        return "é€😀".encode() * rng.randrange(1, 5)
    if kind == 9:
        return b"%s%n%x" * rng.randrange(1, 4)
    return str(rng.randrange(-100, 100000)).encode()


def seeds(node):
    """Valid commands the mutations start from. SETREPL only says this node is a master, so a
    mutation can never make the test server replicate from some stranger's port."""
    me = node.addr.encode()
    peer = node.peer.encode()
    return [
        [b"UMCTL", b"SETCLUSTER", b"v2", b"7", b"NOFLAG", b"db", me, b"1", b"0-8191", b"PEER", peer, b"1", b"8192-16383"],
        [b"UMCTL", b"SETCLUSTER", b"v2", b"7", b"FORCE", b"db", me, b"1", b"0-16383", b"CONFIG", b"compression_strategy", b"disabled"],
        [b"UMCTL", b"SETCLUSTER", b"v2", b"7", b"NOFLAG", b"db", me, b"1", b"0-100", me, b"migrating", b"1", b"101-200",
         b"7", me, me, peer, peer, b"PEER", peer, b"importing", b"1", b"101-200", b"7", me, me, peer, peer],
        [b"UMCTL", b"SETCLUSTER", b"v2", b"7", b"COMPRESS", b"H4sIAAAAAAAA/6tWSkksSVSyUjA0MjZRqgUA"],
        [b"UMCTL.SETCLUSTER", b"v2", b"7", b"NOFLAG", b"db", me, b"1", b"0-16383"],
        [b"UMCTL", b"SETREPL", b"4", b"NOFLAG", b"master", b"db", me, b"1", peer, peer],
        [b"UMCTL", b"GETEPOCH"], [b"UMCTL", b"READY"], [b"UMCTL", b"INFOREPL"], [b"UMCTL", b"LISTCLUSTER"],
        [b"UMCTL", b"INFOMGR"], [b"UMCTL", b"HELP"], [b"UMCTL"],
        [b"CLUSTER", b"SLOTS"], [b"CLUSTER", b"NODES"], [b"CLUSTER", b"SHARDS"], [b"CLUSTER", b"INFO"],
        [b"CLUSTER", b"MYID"], [b"CLUSTER", b"KEYSLOT", b"foo"], [b"CLUSTER", b"COUNTKEYSINSLOT", b"5"],
        [b"CLUSTER", b"GETKEYSINSLOT", b"5", b"10"], [b"CLUSTER", b"REPLICAS", b"0" * 40],
        [b"CLUSTER", b"SETSLOT", b"5", b"NODE", b"x"], [b"CLUSTER"], [b"CLUSTER", b"LINKS"],
        [b"ASKING"], [b"READONLY"], [b"READWRITE"], [b"umcluster.redirect", b"MOVED 1 x:1"],
        [b"umcluster.asking"], [b"umcluster.cluster", b"SLOTS"],
    ]


def mutate(rng, cmd):
    cmd = list(cmd)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        if op == 0 and len(cmd) > 1:
            del cmd[rng.randrange(1, len(cmd))]  # wrong arity
        elif op == 1:
            cmd.insert(rng.randrange(1, len(cmd) + 1), junk(rng))
        elif op == 2 and len(cmd) > 1:
            cmd[rng.randrange(1, len(cmd))] = junk(rng)
        elif op == 3:
            cmd = cmd[: rng.randrange(1, len(cmd) + 1)]  # truncated
        elif op == 4:
            cmd += [junk(rng) for _ in range(rng.randrange(1, 6))]
        elif op == 5 and len(cmd) > 2:
            i = rng.randrange(1, len(cmd))
            cmd[i] = cmd[i].swapcase() if rng.random() < 0.5 else cmd[i] * 2
    return cmd


def accepted(reply):
    return reply == "OK" or (isinstance(reply, str) and not isinstance(reply, Err) and reply.startswith("WARNING"))


def mutates_table(cmd):
    name = cmd[0].lower()
    if name in (b"umctl.setcluster", b"umctl.setrepl"):
        return True
    return name == b"umctl" and len(cmd) > 1 and cmd[1].lower() in (b"setcluster", b"setrepl")


def test_bad_input_matrix_never_crashes_and_only_valid_commands_change_the_table(configured):
    node = configured
    rng = random.Random(SEED)
    base = seeds(node)
    changes = errors = 0
    with RawConnection(node.port, timeout=30) as c:
        before = table(c)
        for i in range(ROUNDS):
            cmd = mutate(rng, rng.choice(base)) if rng.random() < 0.9 else rng.choice(base)
            try:
                reply = c.call(*cmd)
            except ConnectionError as e:
                pytest.fail(f"seed {SEED} round {i}: connection lost on {cmd[:8]!r}: {e}; alive={node.proc.poll()}")
            # RawConnection.read raises on anything that is not a RESP value: reaching here is the check.
            errors += isinstance(reply, Err)
            after = table(c)
            if after != before:
                assert mutates_table(cmd) and accepted(reply), (
                    f"seed {SEED} round {i}: table changed by {cmd[:8]!r} -> {reply!r}")
                changes += 1
                before = after
            if i % 500 == 0:
                alive(node)
    alive(node)
    # No handler even panicked (a caught panic is still a bug).
    with open(node.log_path, errors="replace") as f:
        assert "internal error" not in f.read()
    # The matrix exercised both sides: refusals, and some accepted mutations.
    assert errors > ROUNDS // 4
    assert changes >= 1


def test_asking_in_a_loop_keeps_one_connection_entry(configured):
    node = configured
    base = int(info_fields(node, "umcluster")["umcluster_tracked_connections"])
    with RawConnection(node.port) as c:
        for _ in range(200):
            c.send("ASKING")
        for _ in range(200):
            assert c.read() == "OK"
        assert c.call("READONLY") == "OK"
        tracked = int(info_fields(node, "umcluster")["umcluster_tracked_connections"])
        assert tracked <= base + 1
    # The disconnect event forgets it.
    from conftest import wait_until

    wait_until(lambda: int(info_fields(node, "umcluster")["umcluster_tracked_connections"]) <= base,
               what="connection state forgotten")


def test_maxmemory_reached_still_redirects_and_accepts_pushes(servers):
    # used_memory of a fresh server is above 1 MB: every write is refused with OOM (noeviction).
    node = servers.start(extra_args=["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"])
    peer = peer_of(node)
    assert raw(node, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "db", node.addr, "1", "0-8191",
               "PEER", peer, "1", "8192-16383") == "OK"
    with RawConnection(node.port) as c:
        local = c.call("SET", LOCAL_KEY, "x")
        assert isinstance(local, Err) and local.startswith("OOM"), local
        # The redirect is a read-only module command: it passes the OOM check a write fails.
        assert c.call("SET", REMOTE_KEY, "x") == Err(f"MOVED {key_slot(REMOTE_KEY)} {peer}")
        assert c.call("ASKING") == "OK"
        # The control plane still works: a new table is accepted under OOM.
        assert c.call("UMCTL", "SETCLUSTER", "v2", "2", "NOFLAG", "db", node.addr, "1", "0-16383") == "OK"
        assert c.call("UMCTL", "GETEPOCH") == 2
        assert c.call("GET", REMOTE_KEY) is None


def test_unknown_commands_are_answered_by_the_server(configured):
    with RawConnection(configured.port) as c:
        for name in ["NOSUCHCOMMAND", "", "\x00", "umcluster.nosuch", "x" * 10000]:
            reply = c.call(name, "a", "b")
            assert isinstance(reply, Err) and "unknown command" in reply, reply
        assert c.call("PING") == "PONG"


def test_module_unload_is_refused_while_a_topology_is_in_force(configured, servers):
    node = configured
    reply = raw(node, "MODULE", "UNLOAD", "umcluster")
    assert isinstance(reply, Err), reply
    # Still loaded and routing.
    assert raw(node, "GET", REMOTE_KEY) == Err(f"MOVED {key_slot(REMOTE_KEY)} {node.peer}")
    assert raw(node, "UMCTL", "GETEPOCH") == 5
    # A node that never received a topology serves as a standalone server: unloading is safe.
    fresh = servers.start()
    assert raw(fresh, "MODULE", "UNLOAD", "umcluster") == "OK"
    assert raw(fresh, "SET", REMOTE_KEY, "x") == "OK"
    assert fresh.proc.poll() is None

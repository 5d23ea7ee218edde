"""Cached redirect replies (src/ffi/redirect_cache.rs) on a real server.

The first MOVED (or ASK) of a slot is formatted and cached; later MOVEDs for the same slot take
the filter's quick path and replay the cached reply, later ASKs take the full rules and replay
it. These tests check that the cached answer is
the answer: the same text for every slot of a peer (first and later asks alike), the same error
statistics the server keeps for a formatted error (`errorstat_MOVED`, the redirect command's
`failed_calls`, which also counts the one nested call that made each slot's reply), the module's own counter, RESP3 clients, scripts (a script's `redis.call`
still gets the native script error), MULTI (the transaction is still aborted), pipelines, and a
topology change (the cache must never answer with a previous table's owner).
"""

import random

import pytest
import redis

from conftest import HOST, RawConnection, info_fields, key_in_slot_range, key_slot, raw

SCRIPT_ERROR = "ERR Script attempted to access a non local key in a cluster node"


def peer_addr(server, delta=1):
    port = server.port + delta if server.port + delta <= 65535 else server.port - delta
    return f"{HOST}:{port}"


def push(server, *args):
    return raw(server, "UMCTL", "SETCLUSTER", *[str(a) for a in args])


def half_node(servers, epoch=1):
    """A node owning 0-8191; a peer (never contacted) owns 8192-16383."""
    node = servers.start()
    peer = peer_addr(node)
    assert push(node, "v2", epoch, "NOFLAG", "db", node.addr, 1, "0-8191",
                "PEER", peer, 1, "8192-16383") == "OK"
    return node, peer


def counters(node):
    errors = info_fields(node, "errorstats")
    asks = int(errors.get("errorstat_ASK", "count=0").split("=")[1])
    commandstats = info_fields(node, "commandstats")
    failed_calls = {}
    for command in ("umcluster.redirect", "u.r"):
        stats = commandstats.get(f"cmdstat_{command}", "")
        failed_calls[command] = int(dict(kv.split("=") for kv in stats.split(",")).get(
            "failed_calls", 0)) if stats else 0
    mine = info_fields(node, "umcluster")
    return {
        "errorstat": int(errors.get("errorstat_MOVED", "count=0").split("=")[1]),
        "failed_calls": sum(failed_calls.values()),
        "renamed": failed_calls["u.r"],
        "moved": int(mine["umcluster_redirect_moved"]),
        "ask_errorstat": asks,
        "ask": int(mine["umcluster_redirect_ask"]),
        "script_denied": int(mine["umcluster_script_denied"]),
    }


def remote_keys(n, seed):
    rnd = random.Random(seed)
    keys = []
    while len(keys) < n:
        key = f"k:{rnd.randrange(10**9)}"
        if key_slot(key) >= 8192:
            keys.append(key)
    return keys


def test_cached_moved_is_the_formatted_moved_for_every_slot_and_is_counted_once(servers):
    node, peer = half_node(servers)
    keys = remote_keys(300, seed=7)
    before = counters(node)
    with RawConnection(node.port) as c:
        # Twice each: the first ask of a slot formats and caches, the second replays.
        for key in keys + keys:
            assert c.call("GET", key) == f"MOVED {key_slot(key)} {peer}"
        # Other commands on a cached slot, one and several keys (same tag).
        key = keys[0]
        assert c.call("SET", key, "v") == f"MOVED {key_slot(key)} {peer}"
        assert c.call("INCR", key) == f"MOVED {key_slot(key)} {peer}"
        tag = "{" + key + "}"
        assert c.call("MSET", tag + "a", "1", tag + "b", "2") == f"MOVED {key_slot(key)} {peer}"
    sent = 2 * len(keys) + 3
    after = counters(node)
    assert after["errorstat"] - before["errorstat"] == sent
    # The server also counts each reply's making (one nested call per slot, see moved.rs).
    made = len({key_slot(k) for k in keys})
    assert after["failed_calls"] - before["failed_calls"] == sent + made
    assert after["moved"] - before["moved"] == sent
    assert after["script_denied"] == before["script_denied"]
    # Nothing was written locally.
    assert raw(node, "DBSIZE") == 0


def test_cached_moved_in_a_pipeline_and_for_resp3_clients(servers):
    node, peer = half_node(servers)
    keys = remote_keys(50, seed=11)
    with RawConnection(node.port) as c:
        for key in keys:
            c.send("GET", key)
        for key in keys:
            assert c.read() == f"MOVED {key_slot(key)} {peer}"
    r3 = node.client(protocol=3)
    for key in keys[:10]:
        with pytest.raises(redis.exceptions.ResponseError) as err:
            r3.get(key)
        assert str(err.value) == f"MOVED {key_slot(key)} {peer}"


def test_scripts_get_the_native_error_before_and_after_the_slot_is_cached(servers):
    node, peer = half_node(servers)
    key = remote_keys(1, seed=3)[0]
    script = "return redis.call('GET', ARGV[1])"
    before = counters(node)
    with RawConnection(node.port) as c:
        assert c.call("EVAL", script, 0, key).startswith(SCRIPT_ERROR)
        assert c.call("GET", key) == f"MOVED {key_slot(key)} {peer}"  # now cached
        for _ in range(3):
            assert c.call("EVAL", script, 0, key).startswith(SCRIPT_ERROR)
        # redis.pcall hands the script the same error.
        caught = "return redis.pcall('GET', ARGV[1])"
        assert c.call("EVAL", caught, 0, key).startswith(SCRIPT_ERROR)
    after = counters(node)
    assert after["script_denied"] - before["script_denied"] == 5
    assert after["moved"] - before["moved"] == 1


def test_a_transaction_touching_a_cached_slot_is_aborted(servers):
    node, peer = half_node(servers)
    key = remote_keys(1, seed=5)[0]
    local = key_in_slot_range("local:", 0, 8191)
    with RawConnection(node.port) as c:
        assert c.call("GET", key) == f"MOVED {key_slot(key)} {peer}"  # cached
        assert c.call("MULTI") == "OK"
        assert c.call("SET", local, "1") == "QUEUED"
        c.call("GET", key)
        assert c.call("EXEC").startswith("EXECABORT")
    assert raw(node, "EXISTS", local) == 0


def test_a_topology_change_is_never_answered_from_the_previous_table(servers):
    node, peer = half_node(servers, epoch=1)
    key = remote_keys(1, seed=9)[0]
    slot = key_slot(key)
    other = peer_addr(node, delta=2)
    with RawConnection(node.port) as c:
        for _ in range(2):
            assert c.call("GET", key) == f"MOVED {slot} {peer}"
        # The slot's owner changes: the next MOVED names the new one, first ask and later.
        assert push(node, "v2", 2, "NOFLAG", "db", node.addr, 1, "0-8191",
                    "PEER", other, 1, "8192-16383") == "OK"
        for _ in range(2):
            assert c.call("GET", key) == f"MOVED {slot} {other}"
        # Now this node owns it: served here.
        assert push(node, "v2", 3, "NOFLAG", "db", node.addr, 1, "0-16383") == "OK"
        assert c.call("SET", key, "here") == "OK"
        assert c.call("GET", key) == "here"
        # And away again, to the first peer.
        assert push(node, "v2", 4, "NOFLAG", "db", node.addr, 1, "0-8191",
                    "PEER", peer, 1, "8192-16383") == "OK"
        assert c.call("GET", key) == f"MOVED {slot} {peer}"
        assert c.call("GET", key) == f"MOVED {slot} {peer}"


def test_the_redirect_command_called_by_hand_only_replies_its_line(servers):
    """A client can name the redirect command with a MOVED line of a cached slot: it is not the
    cached string, so it is formatted, not counted, and nothing else happens."""
    node, peer = half_node(servers)
    key = remote_keys(1, seed=13)[0]
    line = f"MOVED {key_slot(key)} {peer}"
    assert raw(node, "GET", key) == line  # cached
    before = counters(node)
    assert raw(node, "umcluster.redirect", line) == line
    assert raw(node, "umcluster.redirect", "MOVED 1 x:1") == "MOVED 1 x:1"
    after = counters(node)
    assert after["moved"] == before["moved"]
    assert after["errorstat"] - before["errorstat"] == 2


def test_ask_is_cached_per_slot_and_a_slot_changing_kind_is_never_answered_from_the_cache(servers):
    """A migrating range answers ASK for keys it no longer holds (the destination here never
    answers, so nothing moves) and serves the keys it still holds; the same slots answered MOVED
    under the previous table must not replay that MOVED."""
    node = servers.start()
    dst = peer_addr(node)
    low = [k for k in (f"k:{i}" for i in range(3000)) if key_slot(k) <= 8191]
    present, absent = low[:20], low[20:120]
    # Version 1: this node owns everything; the present keys are written.
    assert push(node, "v2", 1, "NOFLAG", "db", node.addr, 1, "0-16383") == "OK"
    for key in present:
        assert raw(node, "SET", key, "here") == "OK"
    # Version 2: the range is the destination's: MOVED, cached per slot.
    assert push(node, "v2", 2, "NOFLAG", "db", node.addr, 1, "8192-16383",
                "PEER", dst, 1, "0-8191") == "OK"
    with RawConnection(node.port) as c:
        for _ in range(2):
            for key in present + absent:
                assert c.call("GET", key) == f"MOVED {key_slot(key)} {dst}"
    # Version 3: this node owns the range again and is moving it to the destination.
    meta = [1, node.addr, node.addr, dst, dst]
    assert push(node, "v2", 3, "NOFLAG", "db", node.addr, 1, "8192-16383",
                node.addr, "migrating", 1, "0-8191", *meta,
                "PEER", dst, "importing", 1, "0-8191", *meta) == "OK"
    before = counters(node)
    with RawConnection(node.port) as c:
        for _ in range(2):
            for key in present:
                assert c.call("GET", key) == "here"
            for key in absent:
                assert c.call("GET", key) == f"ASK {key_slot(key)} {dst}"
                assert c.call("SET", key, "v") == f"ASK {key_slot(key)} {dst}"
    after = counters(node)
    sent = 4 * len(absent)
    assert after["ask"] - before["ask"] == sent
    assert after["ask_errorstat"] - before["ask_errorstat"] == sent
    assert after["moved"] == before["moved"]
    assert raw(node, "DBSIZE") == len(present)


def moved_line(key, peer):
    return f"MOVED {key_slot(key)} {peer}"


def test_commands_whose_keys_start_first_are_renamed_in_place(servers):
    """A command whose keys start at its first argument (`GET k`, `HSET k f v`, `MSET k v k v`,
    `DEL k k`) is renamed in place to `u.r` and keeps its arguments; any other (`EVAL`, whose
    first argument is the script) becomes `umcluster.redirect <line>`. Both answer the slot's
    MOVED; the commandstats say which command did."""
    node, peer = half_node(servers)
    keys = remote_keys(20, seed=17)
    tag = "{" + keys[0] + "}"
    with RawConnection(node.port) as c:
        for key in keys:
            assert c.call("GET", key) == moved_line(key, peer)  # made and cached
        before = counters(node)
        for key in keys:
            assert c.call("GET", key) == moved_line(key, peer)
            assert c.call("HSET", key, "f", "v") == moved_line(key, peer)
            assert c.call("TTL", key) == moved_line(key, peer)
        assert c.call("MSET", tag + "a", "1", tag + "b", "2") == moved_line(keys[0], peer)
        assert c.call("DEL", tag + "a", tag + "b") == moved_line(keys[0], peer)
        assert c.call("EVAL", "return 1", 1, keys[0]) == moved_line(keys[0], peer)
    after = counters(node)
    renamed = 3 * len(keys) + 2
    assert after["renamed"] - before["renamed"] == renamed
    assert after["failed_calls"] - before["failed_calls"] == renamed + 1
    assert after["moved"] - before["moved"] == renamed + 1
    assert after["errorstat"] - before["errorstat"] == renamed + 1
    assert raw(node, "DBSIZE") == 0


def test_u_r_by_hand_answers_its_keys_cached_redirect_or_tryagain(servers):
    node, peer = half_node(servers)
    cached = remote_keys(1, seed=19)[0]
    uncached = next(k for k in remote_keys(50, seed=29) if key_slot(k) != key_slot(cached))
    local = key_in_slot_range("local:", 0, 8191)
    raw(node, "SET", local, "here")
    assert raw(node, "GET", cached) == moved_line(cached, peer)  # cached now
    assert raw(node, "u.r", cached) == moved_line(cached, peer)
    assert raw(node, "u.r", cached, "more", "arguments") == moved_line(cached, peer)
    assert raw(node, "u.r", uncached).startswith("TRYAGAIN")
    assert raw(node, "u.r", local).startswith("TRYAGAIN")
    assert raw(node, "u.r").startswith("ERR wrong number of arguments")
    # A script naming it gets the native script error for a key it does not serve.
    script = "return redis.call('u.r', ARGV[1])"
    assert raw(node, "EVAL", script, 0, cached).startswith(SCRIPT_ERROR)
    assert raw(node, "GET", local) == "here"


def test_a_renamed_command_the_server_refuses_hands_nothing_to_a_later_u_r(servers):
    """The filter renames an unauthenticated client's GET of a cached remote slot and hands its
    slot over; the server then refuses it (NOAUTH) before it runs. That connection's own `u.r`
    later must answer its own key, not the refused command's slot."""
    node, peer = half_node(servers)
    key = remote_keys(1, seed=31)[0]
    local = key_in_slot_range("local:", 0, 8191)
    assert raw(node, "GET", key) == moved_line(key, peer)  # cached
    assert raw(node, "CONFIG", "SET", "requirepass", "pw") == "OK"
    try:
        with RawConnection(node.port) as c:
            assert c.call("GET", key).startswith("NOAUTH")
            assert c.call("AUTH", "pw") == "OK"
            assert c.call("u.r", local).startswith("TRYAGAIN")
            assert c.call("GET", key) == moved_line(key, peer)
    finally:
        with RawConnection(node.port) as c:
            assert c.call("AUTH", "pw") == "OK"
            assert c.call("CONFIG", "SET", "requirepass", "") == "OK"


def test_redirects_held_back_by_client_pause_each_answer_their_own_slot(servers):
    """`CLIENT PAUSE ALL` holds renamed commands back after the filter ran; they run later, after
    other clients' redirects were handed over. Each still answers its own key's MOVED (a GET, or
    an MGET of two keys of the slot)."""
    node, peer = half_node(servers)
    keys = []
    for key in remote_keys(200, seed=37):
        if key_slot(key) not in {key_slot(k) for k in keys}:
            keys.append(key)
        if len(keys) == 6:
            break
    for key in keys:
        assert raw(node, "GET", key) == moved_line(key, peer)  # cached
    conns = [RawConnection(node.port) for _ in keys]
    try:
        assert raw(node, "CLIENT", "PAUSE", "1000", "ALL") == "OK"
        for i, (c, key) in enumerate(zip(conns, keys)):
            if i % 2:
                c.send("GET", key)
            else:
                c.send("MGET", "{%s}:a" % key, "{%s}:b" % key)
        for c, key in zip(conns, keys):
            assert c.read() == moved_line(key, peer)
    finally:
        for c in conns:
            c.close()
    assert raw(node, "DBSIZE") == 0


def test_a_script_reuses_its_argument_strings_after_a_renamed_call(servers):
    """Scripts keep their calls' argument strings for the next call; the renamed one (shorter
    now) is reused for the commands after it, in this run and the next."""
    node, peer = half_node(servers)
    key = remote_keys(1, seed=41)[0]
    assert raw(node, "GET", key) == moved_line(key, peer)  # cached
    a, b = key_in_slot_range("a:", 0, 8191), key_in_slot_range("b:", 0, 8191)
    script = """
    local refused = redis.pcall('GET', ARGV[1])
    redis.call('SET', ARGV[2], ARGV[4])
    redis.call('HSET', ARGV[3], 'field', ARGV[4])
    return {refused['err'], redis.call('GET', ARGV[2]), redis.call('HGET', ARGV[3], 'field'),
            redis.call('TTL', ARGV[2])}
    """
    for run in range(3):
        value = f"value-{run}"
        reply = raw(node, "EVAL", script, 0, key, a, b, value)
        assert reply[0].startswith(SCRIPT_ERROR), reply
        assert reply[1:] == [value, value, -1], reply

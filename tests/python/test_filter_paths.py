"""The command filter's paths agree: the same commands get the same answers whichever way a node
hashes keys and whichever path of the filter decides (issue 3).

On a CPU with carry-less multiplication the module registers the filter that hashes keys with
it (`PCLMULQDQ`); elsewhere the portable one (a CRC table). Debug builds pick the portable one
when the server runs with `UMCLUSTER_DEBUG_PORTABLE_FILTER=1`. Within each, a one-key command
spelled in one case whose key is a short plain string takes the shortest path; mixed-case
names, integer-encoded keys, long keys (raw strings, two-byte sds headers), hash tags, several
keys, scripts' `numkeys` (valid, zero, negative, malformed, too large), wrong arities and
unknown commands take the others. Two nodes with the same topology, one
per filter, get the same seeded stream of such commands; every reply must be the same on both
and be what the slot rules say (the command's result on an owned slot, `MOVED` to the peer
otherwise, `CROSSSLOT` for keys in several slots).
"""

import os
import random
import re

import pytest

from conftest import HOST, Err, RawConnection, key_slot

SEED = int(os.environ.get("FILTER_PATHS_SEED", "3"))
ROUNDS = int(os.environ.get("FILTER_PATHS_ROUNDS", "3000"))
OWNED = range(0, 8192)


def configure(node, peer):
    with RawConnection(node.port) as c:
        assert c.call("UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "db", node.addr, "1", "0-8191",
                      "PEER", peer, "1", "8192-16383") == "OK"


def random_key(rng):
    kind = rng.random()
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789:_-{}"
    if kind < 0.1:
        return str(rng.randrange(-1000, 10**12))  # integer-encoded argument
    if kind < 0.2:
        return "k" * rng.choice([45, 100, 255, 256, 300])  # raw strings, sdshdr8 and sdshdr16
    if kind < 0.35:
        tag = "".join(rng.choice(alphabet[:36]) for _ in range(rng.randrange(0, 6)))
        return rng.choice(["{%s}x", "x{%s}", "a{%s}b{c}", "{{%s}}", "{}%s"]) % tag
    n = rng.randrange(0, 40)
    return "".join(rng.choice(alphabet) for _ in range(n))


def spell(rng, name):
    """The name in lower, upper or mixed case."""
    r = rng.random()
    if r < 0.4:
        return name.lower()
    if r < 0.8:
        return name.upper()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def random_command(rng):
    k = lambda: random_key(rng)  # noqa: E731
    shape = rng.randrange(11)
    if shape == 0:
        return [spell(rng, "GET"), k()]
    if shape == 1:
        return [spell(rng, "SET"), k(), "v"]
    if shape == 2:
        return [spell(rng, "INCR"), str(rng.randrange(10**6))]
    if shape == 3:
        return [spell(rng, "HSET"), k(), "f", "v"]
    if shape == 4:
        tag = rng.choice(["{t1}", "{t2}", ""])
        keys = [tag + k() for _ in range(rng.randrange(1, 4))]
        return [spell(rng, "MSET")] + [x for key in keys for x in (key, "v")]
    if shape == 5:
        return [spell(rng, "MGET")] + [k() for _ in range(rng.randrange(1, 4))]
    if shape == 6:
        return [spell(rng, "DEL")] + [rng.choice(["{t1}", ""]) + k() for _ in range(rng.randrange(1, 3))]
    if shape == 7:
        return [spell(rng, rng.choice(["GET", "SET", "INCR"]))]  # wrong arity
    if shape == 9:
        # A script's keys follow `numkeys` (one key spec, evaluated by the filter itself).
        numkeys = rng.choice(["0", "1", "1", "2", "3", "-1", "x", "01", "99"])
        tag = rng.choice(["{t1}", ""])
        return [spell(rng, "EVAL"), "return 1", numkeys] + [tag + k() for _ in range(rng.randrange(0, 4))]
    if shape == 8:
        return [spell(rng, rng.choice(["PING", "DBSIZE", "ECHO"]))] + (["x"] if rng.random() < 0.3 else [])
    return [spell(rng, rng.choice(["NOSUCHCMD", "GETX", "G"])), k()]


#: Commands with one key, at position 1, and their arity.
ONE_KEY_ARITY = {"GET": 2, "SET": 3, "INCR": 2, "HSET": 4}


def keys_of(cmd):
    name = cmd[0].upper()
    if name in ONE_KEY_ARITY:
        return [cmd[1]] if ONE_KEY_ARITY[name] == len(cmd) else []
    if name == "MSET":
        return cmd[1::2] if len(cmd) >= 3 and len(cmd) % 2 == 1 else []
    if name in ("MGET", "DEL"):
        return cmd[1:]
    if name == "EVAL":
        if not re.fullmatch(r"-?(0|[1-9][0-9]*)", cmd[2]):
            return []
        numkeys = int(cmd[2])
        return cmd[3:3 + numkeys] if 0 < numkeys <= len(cmd) - 3 else []
    return []


def expected_redirect(cmd, peer):
    """The error the slot rules call for, or None if the node runs the command."""
    slots = {key_slot(key) for key in keys_of(cmd)}
    if len(slots) > 1:
        return "CROSSSLOT Keys in request don't hash to the same slot"
    if slots and next(iter(slots)) not in OWNED:
        return f"MOVED {next(iter(slots))} {peer}"
    return None


def test_clmul_and_portable_filters_answer_every_command_alike(servers):
    fast = servers.start()
    portable = servers.start(env={"UMCLUSTER_DEBUG_PORTABLE_FILTER": "1"})
    peer = f"{HOST}:1"
    for node in (fast, portable):
        configure(node, peer)
    with open(fast.log_path) as f:
        fast_log = f.read()
    with open(portable.log_path) as f:
        assert "key slots by portable table" in f.read()
    if "key slots by carry-less multiplication" not in fast_log:
        pytest.skip("this CPU has no PCLMULQDQ: both nodes run the portable filter")

    rng = random.Random(SEED)
    redirected = executed = 0
    with RawConnection(fast.port) as a, RawConnection(portable.port) as b:
        for _ in range(ROUNDS):
            cmd = random_command(rng)
            got_a, got_b = a.call(*cmd), b.call(*cmd)
            assert got_a == got_b, f"{cmd!r}: {got_a!r} (carry-less) vs {got_b!r} (portable)"
            want = expected_redirect(cmd, peer)
            if want is not None:
                assert got_a == Err(want), f"{cmd!r}: {got_a!r}, expected -{want}"
                redirected += 1
            else:
                assert not (isinstance(got_a, Err) and got_a.split()[0] in ("MOVED", "ASK", "CROSSSLOT")), (
                    f"{cmd!r} was redirected: {got_a!r}")
                executed += 1
    # The stream exercised both outcomes, so the comparison above meant something.
    assert redirected > ROUNDS // 10 and executed > ROUNDS // 10, (redirected, executed)

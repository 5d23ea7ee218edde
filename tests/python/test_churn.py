"""Topology churn under load (issue 6).

Two nodes get hundreds of valid pushes (a random cut of the slot space between them, a random
side each time, strictly increasing epochs) while client threads hammer both with GET/SET.

Checked:
- every reply is a value, `OK`, or `MOVED <slot> <addr>` (no other error, no lost connection);
- each answer is consistent with some table that was in force: a value from node N for slot s
  means some pushed table gave s to N, and `MOVED s X` from N means some table gave s to X (not N);
- no redirect loop between nodes that agree on the epoch: when a client follows a redirect and
  comes back where it started, the two nodes' epochs must have changed during the hop;
- after the churn, with both nodes on the last table, every key is served within one redirect.
The RNG is seeded (CHURN_SEED, default 6).
"""

import os
import random
import threading

from conftest import Err, RawConnection, key_slot, raw

SEED = int(os.environ.get("CHURN_SEED", "6"))
PUSHES = int(os.environ.get("CHURN_PUSHES", "300"))
SLOTS = 16384


def cut_args(epoch, name, lower, upper, cut, me):
    """SETCLUSTER args for node `me`: `lower` owns 0..cut-1, `upper` owns cut..16383."""
    mine, peer = (lower, upper) if me == lower else (upper, lower)
    my_range = f"0-{cut - 1}" if me == lower else f"{cut}-{SLOTS - 1}"
    peer_range = f"{cut}-{SLOTS - 1}" if me == lower else f"0-{cut - 1}"
    return ["UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", name, mine, "1", my_range, "PEER", peer, "1", peer_range]


def test_churn_under_load_answers_from_some_table_and_never_loops(servers):
    a, b = servers.start(), servers.start()
    nodes = {a.addr: a, b.addr: b}
    rng = random.Random(SEED)
    history = []  # (lower owner addr, cut): slot < cut -> lower, else the other node
    other = {a.addr: b.addr, b.addr: a.addr}

    def owner(table, slot):
        lower, cut = table
        return lower if slot < cut else other[lower]

    def push(epoch, lower, cut):
        history.append((lower, cut))  # recorded before either node can answer with it
        for n in (a, b):
            assert raw(n, *cut_args(epoch, "churn", lower, other[lower], cut, n.addr)) == "OK"

    push(1, a.addr, SLOTS // 2)

    stop = threading.Event()
    failures = []
    counts = {"value": 0, "moved": 0, "loops_checked": 0}
    keys = [f"churn:{i}" for i in range(2000)]

    def hammer(tid):
        trng = random.Random(SEED * 100 + tid)
        conns = {addr: RawConnection(n.port) for addr, n in nodes.items()}
        try:
            while not stop.is_set():
                key = trng.choice(keys)
                slot = key_slot(key)
                start = trng.choice([a.addr, b.addr])
                epochs_before = {addr: c.call("UMCTL", "GETEPOCH") for addr, c in conns.items()}
                path = [start]
                at = start
                for _hop in range(3):
                    c = conns[at]
                    reply = c.call("SET", key, "v") if trng.random() < 0.3 else c.call("GET", key)
                    if isinstance(reply, Err):
                        parts = reply.split()
                        if len(parts) != 3 or parts[0] != "MOVED" or int(parts[1]) != slot:
                            failures.append(f"{at}: unexpected error {reply!r} for {key}")
                            return
                        target = parts[2]
                        if not any(owner(t, slot) == target != at for t in list(history)):
                            failures.append(f"{at}: MOVED {slot} {target} matches no table in force")
                        counts["moved"] += 1
                        at = target
                        path.append(at)
                        continue
                    if not any(owner(t, slot) == at for t in list(history)):
                        failures.append(f"{at}: served slot {slot} that no table gave it")
                    counts["value"] += 1
                    break
                if len(path) >= 3 and path[0] == path[2]:
                    epochs_after = {addr: c.call("UMCTL", "GETEPOCH") for addr, c in conns.items()}
                    counts["loops_checked"] += 1
                    same = epochs_before == epochs_after and len(set(epochs_before.values())) == 1
                    if same:
                        failures.append(f"redirect loop {path} for slot {slot} at a stable epoch {epochs_before}")
        except Exception as e:  # a lost connection is a failure, reported with its cause
            failures.append(f"thread {tid}: {type(e).__name__}: {e}")
        finally:
            for c in conns.values():
                c.close()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for epoch in range(2, PUSHES + 2):
            cut = rng.randrange(1, SLOTS)
            push(epoch, rng.choice([a.addr, b.addr]), cut)
            if failures:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    print("churn", counts)
    assert not failures, failures[:10]
    assert counts["value"] > 0 and counts["moved"] > 0, counts

    # Settled: both on the last table, every key within one redirect.
    final = history[-1]
    for n in (a, b):
        assert raw(n, "UMCTL", "GETEPOCH") == PUSHES + 1
    with RawConnection(a.port) as ca, RawConnection(b.port) as cb:
        conns = {a.addr: ca, b.addr: cb}
        for key in keys[:500]:
            slot = key_slot(key)
            reply = ca.call("GET", key)
            if isinstance(reply, Err):
                assert reply == Err(f"MOVED {slot} {b.addr}") and owner(final, slot) == b.addr
                assert not isinstance(conns[b.addr].call("GET", key), Err)
            else:
                assert owner(final, slot) == a.addr
    for n in (a, b):
        assert n.proc.poll() is None and raw(n, "PING") == "PONG"

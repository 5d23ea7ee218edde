"""Slot migration driven by raw UMCTL SETCLUSTER pushes: the source moves the keys of its
migrating slots to the destination itself (every type, TTLs, every database), reports progress in
UMCTL MIGRATIONS / INFOMGR / INFO, keeps the redirect rules during the move, survives a
destination that is down, and keeps its replica identical."""

import os
import threading
import time

import pytest
import redis

from conftest import Err, RawConnection, key_slot, wait_until

CLUSTER = "mig"
LOW, HIGH = 0, 8191  # the range that moves
# The source keeps 8192-15999; the destination owns 16000-16383 throughout, so cluster clients
# know it before the first ASK (redis-py follows ASK only to nodes of its slot map).
KEEP, DST_OWN = "8192-15999", "16000-16383"


def connect(node):
    """A raw connection to `node`, authenticated when the test gave it a password."""
    c = RawConnection(node.port)
    if getattr(node, "password", None):
        assert c.call("AUTH", node.password) == "OK"
    return c


def meta(src, dst, mepoch=1):
    return [str(mepoch), src.addr, src.addr, dst.addr, dst.addr]


def push_stable(epoch, src, dst, src_ranges="0-15999", dst_ranges=DST_OWN, source_only=False):
    """Source owns src_ranges, destination dst_ranges (one or two ranges each); `source_only`:
    only the source takes the push (a destination without the module)."""
    def group(addr, ranges):
        rs = ranges.split()
        return [addr, str(len(rs)), *rs]

    def args(me, other, mine, theirs):
        return ["UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", CLUSTER,
                *group(me.addr, mine), "PEER", *group(other.addr, theirs)]
    pushes = [(src, dst, src_ranges, dst_ranges), (dst, src, dst_ranges, src_ranges)]
    for node, other, mine, theirs in pushes[:1] if source_only else pushes:
        with connect(node) as c:
            assert c.call(*args(node, other, mine, theirs)) == "OK"


def push_migrating(epoch, src, dst, mepoch=1, source_only=False, destination_only=False, config=()):
    """Source keeps 8192-16383 and migrates 0-8191 to the destination; `config` (field, value, ...)
    goes to the source as the push's CONFIG section."""
    m = meta(src, dst, mepoch)
    src_args = ["UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", CLUSTER,
                src.addr, "1", KEEP,
                src.addr, "migrating", "1", f"{LOW}-{HIGH}", *m,
                "PEER", dst.addr, "1", DST_OWN, dst.addr, "importing", "1", f"{LOW}-{HIGH}", *m]
    if config:
        src_args += ["CONFIG", *map(str, config)]
    dst_args = ["UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", CLUSTER,
                dst.addr, "1", DST_OWN, dst.addr, "importing", "1", f"{LOW}-{HIGH}", *m,
                "PEER", src.addr, "1", KEEP,
                src.addr, "migrating", "1", f"{LOW}-{HIGH}", *m]
    if not source_only:
        with connect(dst) as c:
            assert c.call(*dst_args) == "OK"
    if destination_only:
        return
    with connect(src) as c:
        assert c.call(*src_args) == "OK"


def push_committed(epoch, src, dst):
    push_stable(epoch, src, dst, KEEP, f"{LOW}-{HIGH} {DST_OWN}")


def migrations(node):
    with connect(node) as c:
        reply = c.call("UMCTL", "MIGRATIONS")
    out = []
    for entry in reply:
        it = iter(entry)
        out.append({k.decode() if isinstance(k, bytes) else k: (v.decode() if isinstance(v, bytes) else v) for k, v in zip(it, it)})
    return out


def infomgr(node):
    with connect(node) as c:
        return c.call("UMCTL", "INFOMGR")


def task_done(node):
    tasks = [t for t in migrations(node) if t["role"] == "migrating"]
    return bool(tasks) and all(t["state"] == "done" for t in tasks)


def move_and_commit(src, dst):
    """Marks the move (epoch 2), waits until the mover is done, commits it (epoch 3)."""
    push_migrating(2, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="migration done")
    push_committed(3, src, dst)


def keys_in(lo, hi, prefix, n):
    out, i = [], 0
    while len(out) < n:
        k = f"{prefix}:{i}"
        if lo <= key_slot(k) <= hi:
            out.append(k)
        i += 1
    return out


def fill_every_type(client, prefix, n):
    """n keys of each type in the moving range, half with a TTL; returns their names."""
    names = []
    pipe = client.pipeline(transaction=False)
    for i, k in enumerate(keys_in(LOW, HIGH, prefix, n * 6)):
        kind = i % 6
        if kind == 0:
            pipe.set(k, f"v{i}")
        elif kind == 1:
            pipe.hset(k, mapping={"a": i, "b": "x"})
        elif kind == 2:
            pipe.rpush(k, i, i + 1, "z")
        elif kind == 3:
            pipe.sadd(k, i, "m")
        elif kind == 4:
            pipe.zadd(k, {"p": i, "q": 0.5})
        else:
            pipe.xadd(k, {"f": i})
        if i % 2:
            pipe.expire(k, 3600)
        names.append(k)
    pipe.execute()
    return names


def value(client, k):
    kind = client.type(k)
    if kind == "string":
        return kind, client.get(k)
    if kind == "hash":
        return kind, client.hgetall(k)
    if kind == "list":
        return kind, client.lrange(k, 0, -1)
    if kind == "set":
        return kind, client.smembers(k)
    if kind == "zset":
        return kind, client.zrange(k, 0, -1, withscores=True)
    if kind == "stream":
        return kind, client.xrange(k)
    return kind, None


def snapshot(client, names):
    """Type, value and TTL of each key."""
    return {k: (value(client, k), client.pttl(k)) for k in names}


def same_ttl(a, b):
    return (a < 0 and a == b) or (a >= 0 and b >= 0 and abs(a - b) < 60_000)


def test_moves_every_type_with_ttls_from_every_database(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    before = {}
    for db in (0, 3):
        c = src.client(db=db)
        names = fill_every_type(c, f"db{db}", 30)
        before[db] = snapshot(c, names)
        # Keys of the range that stays.
    total = sum(len(v) for v in before.values())

    push_migrating(2, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="migration done")

    (task,) = migrations(src)
    assert task["state"] == "done" and int(task["keys_moved"]) == total, (task, src.log_tail(20), dst.log_tail(10))
    assert task["keys_left"] == "0" and task["errors"] == "0"
    assert infomgr(src) == [f"{CLUSTER} MIGRATING 1 {LOW}-{HIGH} 1 {src.addr} {src.addr} {dst.addr} {dst.addr}"]
    (imp,) = migrations(dst)
    assert imp["role"] == "importing"
    info = src.client().info("umcluster")
    assert info["umcluster_migration_keys_moved"] == total
    assert info["umcluster_migration_bytes_moved"] > 0
    assert info["umcluster_migrations_running"] == 0

    # Read the destination once it owns the range (before, it serves only ASKING clients).
    push_committed(3, src, dst)
    assert migrations(src) == [] and infomgr(src) == []
    for db, snap in before.items():
        s, d = src.client(db=db), dst.client(db=db)
        # (EXISTS on the source would be answered ASK: the keys are gone, so the slot asks.)
        left = [k for k in s.scan_iter(count=1000) if key_slot(k) <= HIGH]
        assert left == [], f"db {db}: keys left on the source"
        after = snapshot(d, list(snap))
        for k, (payload, ttl) in snap.items():
            assert after[k][0] == payload, f"db {db} {k}: value differs"
            assert same_ttl(ttl, after[k][1]), f"db {db} {k}: ttl {ttl} -> {after[k][1]}"
    cc = src.cluster_client()
    k = next(iter(before[0]))
    assert value(cc, k) == before[0][k][0]


class ClusterLoad:
    """Runs `step(cluster_client, i)` for i = 0, 1, ... in a thread until the `with` block ends;
    `steps` counts the steps begun, `errors` keeps every exception (anything redis-py could not
    retry, or a bug)."""

    def __init__(self, node, step):
        self.node, self.step = node, step
        self.steps, self.errors = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        cc = self.node.cluster_client()
        i = 0
        while not self._stop.is_set():
            self.steps = i
            try:
                self.step(cc, i)
            except Exception as e:
                self.errors.append(repr(e))
            i += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def test_redirects_key_by_key_while_the_destination_is_down(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    present, absent = keys_in(LOW, HIGH, "p", 2), keys_in(LOW, HIGH, "a", 1)[0]
    for k in present:
        c.set(k, "v")
    # Two keys of one slot, one present and one absent, for TRYAGAIN.
    tag = present[0]
    c.set(f"{{{tag}}}x", "1")
    dst_port = dst.port
    # The destination is down when the migration opens: nothing can move, the state is open.
    dst.stop()
    push_migrating(2, src, dst, source_only=True)
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="source tried the destination")
    with RawConnection(src.port) as r:
        assert r.call("GET", present[1]) == "v"
        assert r.call("GET", absent) == Err(f"ASK {key_slot(absent)} 127.0.0.1:{dst_port}")
        assert r.call("SET", absent, "new") == Err(f"ASK {key_slot(absent)} 127.0.0.1:{dst_port}")
        split = r.call("MGET", f"{{{tag}}}x", f"{{{tag}}}missing")
        assert split == Err("TRYAGAIN Multiple keys request during rehashing of slot"), split
    (task,) = migrations(src)
    assert task["state"] == "retrying" and int(task["errors"]) >= 1 and task["last_error"], task
    assert src.client().info("umcluster")["umcluster_migration_errors"] >= 1
    # Destination back: the move completes and nothing is lost.
    dst.start(port=dst_port)
    push_migrating(3, src, dst)  # the restarted destination has no topology: push it again
    wait_until(lambda: task_done(src), timeout=60, what="migration done after the destination came back")
    push_committed(4, src, dst)
    d = dst.client()
    assert [d.get(k) for k in present] == ["v"] * len(present), (migrations(src), src.log_tail(8))
    assert d.get(f"{{{tag}}}x") == "1"
    assert src.client().dbsize() == 0


@pytest.mark.parametrize("databases", [16, 1])
def test_moving_slots_look_keys_up_in_the_callers_database(servers, databases):
    """Whether a key of a moving slot is still here depends on the caller's database: the module
    reads it from the client struct (calibrated by selecting another database once) or, on a
    server with one database, asks the API. Each connection must be answered for its own."""
    extra = ("--databases", str(databases))
    src = servers.start(extra_args=extra)
    dst = servers.start(extra_args=extra)
    push_stable(1, src, dst)
    db = databases - 1  # the last database: 15, or 0 when there is only one
    here, gone = keys_in(LOW, HIGH, "db", 2)
    with RawConnection(src.port) as c:
        assert c.call("SELECT", db) == "OK"
        assert c.call("SET", here, "in-db") == "OK"
    dst_port = dst.port
    dst.stop()  # nothing can move: the keys stay, the slots stay open
    push_migrating(2, src, dst, source_only=True)
    ask = lambda k: Err(f"ASK {key_slot(k)} 127.0.0.1:{dst_port}")  # noqa: E731
    # The mover may have a key on its way to the (down) destination for a moment, until its
    # link fails: that key answers TRYAGAIN meanwhile, as a client would see it. Retried here.

    def call(conn, *args):
        reply = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = conn.call(*args)
            if not (isinstance(reply, Err) and reply.startswith("TRYAGAIN")):
                return reply
            time.sleep(0.01)
        return reply

    # Several connections, each in its database, interleaved.
    with RawConnection(src.port) as in_db, RawConnection(src.port) as in_zero:
        assert in_db.call("SELECT", db) == "OK"
        for _ in range(3):
            assert call(in_db, "GET", here) == "in-db"
            assert call(in_db, "GET", gone) == ask(gone)
            assert call(in_db, "SET", here, "in-db") == "OK"
            if databases > 1:
                assert call(in_zero, "GET", here) == ask(here), "db 0 does not hold it"
                assert call(in_zero, "SET", here, "x") == ask(here)
        # The same connection switching databases.
        if databases > 1:
            assert in_db.call("SELECT", 0) == "OK"
            assert call(in_db, "GET", here) == ask(here)
            assert in_db.call("SELECT", db) == "OK"
            assert call(in_db, "GET", here) == "in-db"
            # Inside a transaction: the SELECT runs at EXEC, and so do the commands after it.
            assert in_db.call("MULTI") == "OK"
            assert in_db.call("SELECT", 0) == "QUEUED"
            assert in_db.call("EXEC") == ["OK"]
            assert call(in_db, "GET", here) == ask(here)
    log = open(src.log_path).read()
    expected = "client databases readable" if databases > 1 else "client databases unreadable"
    assert expected in log, src.log_tail(20)


def test_transactions_on_a_migrating_slot_keep_the_transaction_rules(servers):
    """In MULTI, commands on a migrating slot take the transaction rules (the quick paths for
    moving slots are for plain clients only): a key gone here aborts the transaction even once
    the slot's ASK is cached, and keys of two slots abort it, whether the keys are here or not."""
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    present = keys_in(LOW, HIGH, "mp", 2)
    absent = keys_in(LOW, HIGH, "ma", 1)[0]
    other = keys_in(HIGH + 1, 15999, "kept", 1)[0]  # a stable slot the source keeps
    c = src.client()
    for k in present:
        c.set(k, "v")
    c.set(other, "o")
    dst_port = dst.port
    dst.stop()  # nothing moves: the slots stay open
    push_migrating(2, src, dst, source_only=True)
    ask = Err(f"ASK {key_slot(absent)} 127.0.0.1:{dst_port}")
    with RawConnection(src.port) as r:
        assert r.call("GET", absent) == ask  # cached from here on
        assert r.call("GET", absent) == ask
        # A key gone here inside MULTI: the transaction fails as a whole.
        assert r.call("MULTI") == "OK"
        assert r.call("SET", present[0], "changed") == "QUEUED"
        queued = r.call("GET", absent)
        assert isinstance(queued, Err) and f"ASK {key_slot(absent)}" in queued, queued
        assert r.call("EXEC").startswith("EXECABORT")
        assert r.call("GET", present[0]) == "v", "nothing of the transaction ran"
        # Two slots, every key here: CROSSSLOT for the second one, the transaction fails.
        assert r.call("MULTI") == "OK"
        assert r.call("GET", present[1]) == "QUEUED"
        assert isinstance(r.call("SET", other, "x"), Err)
        assert r.call("EXEC").startswith("EXECABORT")
        assert r.call("GET", other) == "o"
        # Outside MULTI the same commands are served as before.
        assert r.call("GET", present[1]) == "v"
        assert r.call("GET", absent) == ask


def test_no_acknowledged_write_is_lost_under_load(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    counters = keys_in(LOW, HIGH, "ctr", 50) + keys_in(HIGH + 1, 15999, "ctr", 10)
    doomed = keys_in(LOW, HIGH, "del", 100)
    bulk = keys_in(LOW, HIGH, "bulk", 3000)
    pipe = c.pipeline(transaction=False)
    for k in counters:
        pipe.set(k, 0)
    for k in doomed + bulk:
        pipe.set(k, "x")
    pipe.execute()

    acked = {k: 0 for k in counters}
    created, deleted = [], []

    def step(cc, i):
        k = counters[i % len(counters)]
        cc.incr(k)
        acked[k] += 1
        if i % 7 == 0:
            n = f"new:{i}"
            cc.set(n, i, ex=3600)
            created.append((n, i))
        if i % 11 == 0 and doomed:
            d = doomed.pop()
            cc.delete(d)
            deleted.append(d)

    with ClusterLoad(src, step) as load:
        wait_until(lambda: sum(acked.values()) > 200, timeout=20, what="load running")
        push_migrating(2, src, dst)
        wait_until(lambda: task_done(src), timeout=120, what="migration done under load")
        push_committed(3, src, dst)
        n = sum(acked.values())
        wait_until(lambda: sum(acked.values()) > n + 200 or load.errors, timeout=20,
                   what="load continues after commit")
    assert load.errors == [], load.errors[:5]
    cc = src.cluster_client()
    for k, v in acked.items():
        assert int(cc.get(k)) == v, f"{k}: {cc.get(k)} != {v} acknowledged increments"
    for n, i in created:
        assert cc.get(n) == str(i), n
        assert cc.ttl(n) > 0
    for d in deleted:
        assert cc.exists(d) == 0, f"{d} came back"
    # Every key is on its owner.
    for k in src.client().scan_iter(count=1000):
        assert HIGH < key_slot(k) < 16000, f"{k} left on the source"
    for k in dst.client().scan_iter(count=1000):
        assert key_slot(k) <= HIGH or key_slot(k) >= 16000, f"{k} on the destination outside its slots"


def test_replica_of_the_source_stays_identical(servers):
    src, dst, rep = servers.start_many(3)
    push_stable(1, src, dst)
    rep.client().replicaof("127.0.0.1", src.port)
    c = src.client()
    for k in keys_in(0, 15999, "r", 2000):
        c.set(k, k)
    wait_until(lambda: rep.client().dbsize() == 2000, timeout=30, what="replica synced")
    push_migrating(2, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="migration done")
    c.execute_command("WAIT", 1, 5000)
    wait_until(lambda: rep.client().execute_command("DEBUG", "DIGEST") == c.execute_command("DEBUG", "DIGEST"),
               timeout=30, what="replica digest equals the source's")
    assert rep.client().dbsize() == c.dbsize() < 2000


def test_replicas_of_both_sides_stay_identical_under_writes_during_the_move(servers):
    src, dst, src_rep, dst_rep = servers.start_many(4)
    push_stable(1, src, dst)
    src_rep.client().replicaof("127.0.0.1", src.port)
    dst_rep.client().replicaof("127.0.0.1", dst.port)
    c = src.client()
    moving = keys_in(LOW, HIGH, "w", 20000)
    pipe = c.pipeline(transaction=False)
    for i, k in enumerate(moving):
        pipe.set(k, i)
        if i % 3 == 0:
            pipe.expire(k, 3600)
    pipe.execute()
    wait_until(lambda: src_rep.client().dbsize() == len(moving), timeout=30, what="source replica synced")
    def step(cc, i):
        k = moving[(i * 7) % len(moving)]
        if i % 5 == 0:
            cc.delete(k)
        elif i % 5 == 1:
            cc.set(f"{k}:new{i}", i)
        else:
            cc.incr(k)

    with ClusterLoad(src, step) as load:
        wait_until(lambda: load.steps > 100, timeout=20, what="writes running")
        before = load.steps
        # The mover alone finishes 20,000 keys faster than the writes can start to overlap it on a
        # fast machine: ticks (at most 1 ms) every 20 ms make the move last seconds instead.
        push_migrating(2, src, dst, config=("migration_scan_interval", 20000))
        wait_until(lambda: task_done(src), timeout=120, what="migration done under writes")
        during = load.steps - before
    assert load.errors == [], load.errors[:5]
    assert during > 50, f"only {during} writes overlapped the move"
    for master, replica in ((src, src_rep), (dst, dst_rep)):
        m = master.client()
        m.execute_command("WAIT", 1, 5000)
        wait_until(lambda: replica.client().execute_command("DEBUG", "DIGEST")
                   == m.execute_command("DEBUG", "DIGEST"),
                   timeout=30, what=f"replica of {master.addr} identical to it")
    assert all(key_slot(k) > HIGH for k in src.client().scan_iter(count=1000)), "a moving key stayed"
    assert dst.client().dbsize() > 0


def test_a_watched_key_that_moves_fails_the_transaction(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    k, other = keys_in(LOW, HIGH, "watched", 1)[0], keys_in(HIGH + 1, 15999, "other", 1)[0]
    c.set(k, "v")
    with RawConnection(src.port) as r:
        assert r.call("WATCH", k) == "OK"
        push_migrating(2, src, dst)
        wait_until(lambda: task_done(src), timeout=30, what="migration done")
        assert r.call("MULTI") == "OK"
        assert r.call("SET", other, "x") == "QUEUED"
        assert r.call("EXEC") is None, "the watched key left: EXEC must fail"
    assert c.get(other) is None


def test_a_transaction_queued_before_its_keys_moved_is_aborted(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    k = keys_in(LOW, HIGH, "tx", 1)[0]
    c.set(k, 1)
    with RawConnection(src.port) as r:
        assert r.call("MULTI") == "OK"
        assert r.call("INCR", k) == "QUEUED"
        push_migrating(2, src, dst)
        wait_until(lambda: task_done(src), timeout=30, what="migration done")
        reply = r.call("EXEC")
        assert isinstance(reply, Err) and reply.startswith("EXECABORT"), reply
    push_committed(3, src, dst)
    assert dst.client().get(k) == "1"
    assert [x for x in c.scan_iter() if key_slot(x) <= HIGH] == []


def test_a_re_push_keeps_the_task_and_a_replica_or_empty_range_finishes_at_once(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    push_migrating(2, src, dst)
    wait_until(lambda: task_done(src), timeout=20, what="empty range done")
    push_migrating(3, src, dst)  # same migration, higher epoch
    (task,) = migrations(src)
    assert task["state"] == "done"


def resp_call(sock, *args):
    """One command over a plain socket; returns the first reply line."""
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += f"${len(a)}\r\n".encode() + a + b"\r\n"
    sock.sendall(out)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data.decode(errors="replace").strip()


def asking_get(node, key):
    """GET on the node itself, redirect rules aside (ASKING first): what an importing slot holds."""
    with RawConnection(node.port) as r:
        assert r.call("ASKING") == "OK"
        return r.call("GET", key)


def test_the_destination_takes_restore_and_import_only_from_the_migration_source(servers):
    import socket

    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    k = keys_in(LOW, HIGH, "r", 1)[0]
    c = src.client()
    c.set(k, "v")
    payload = redis.Redis(host="127.0.0.1", port=src.port).dump(k)
    dst.stop()
    port = dst.port
    dst.start(port=port)
    push_migrating(2, src, dst, source_only=True)
    with RawConnection(dst.port) as r:
        m = meta(src, dst)
        assert r.call("UMCTL", "SETCLUSTER", "v2", "2", "NOFLAG", CLUSTER,
                      dst.addr, "1", DST_OWN, dst.addr, "importing", "1", f"{LOW}-{HIGH}", *m,
                      "PEER", src.addr, "1", KEEP, src.addr, "migrating", "1", f"{LOW}-{HIGH}", *m) == "OK"
    dst.client().config_set("protected-mode", "no")  # lets 127.0.0.2 connect at all
    # Another host (127.0.0.2 is loopback too, but not the source the topology names).
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=10) as s:
        reply = resp_call(s, "RESTORE", k, 0, payload, "REPLACE")
        assert reply.startswith(f"-MOVED {key_slot(k)} "), reply
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0), timeout=10) as s:
        # The source's host: the same RESTORE is served (MIGRATE's path).
        assert resp_call(s, "RESTORE", k, 0, payload, "REPLACE") == "+OK"
    # The mover's batch command: refused as a whole from another host, nothing applied.
    other = keys_in(LOW, HIGH, "imp", 2)
    batch = ["umcluster.import", 0, other[0], "S", "a", other[1], "S", "b"]
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=10) as s:
        reply = resp_call(s, *batch)
        assert reply.startswith("-ERR umcluster.import: not a migration source"), reply
    assert [asking_get(dst, k) for k in other] == [None, None]
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0), timeout=10) as s:
        # A key outside the importing slots spoils the whole batch.
        outside = keys_in(HIGH + 1, 15999, "imp", 1)[0]
        reply = resp_call(s, *batch, outside, "S", "c")
        assert reply.startswith("-ERR umcluster.import: not a migration source"), reply
        assert [asking_get(dst, k) for k in other] == [None, None]
        assert dst.client().dbsize() == 1  # the RESTOREd key only
        assert resp_call(s, *batch) == "+OK"
        # Malformed batches are refused before anything is applied.
        for bad in (["umcluster.import", 0, other[0], "S"], ["umcluster.import", "x", other[0], "S", "v"],
                    ["umcluster.import", 0, other[0], "Q", "v"], ["umcluster.import", 0, other[0], "S12x", "v"],
                    ["umcluster.import", 99, other[0], "S", "v"]):
            assert resp_call(s, *bad).startswith("-ERR"), bad
    assert [asking_get(dst, k) for k in other] == ["a", "b"]
    # A payload the server's RESTORE rejects: the entries before it are applied, the rest not,
    # and the error says why (the mover sends the whole batch again; every entry replaces).
    first, bad, last = keys_in(LOW, HIGH, "part", 3)
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0), timeout=10) as s:
        reply = resp_call(s, "umcluster.import", 0, first, "S", "1st", bad, "D", "garbage", last, "S", "3rd")
        assert reply.startswith("-") and "payload" in reply, reply
    assert [asking_get(dst, k) for k in (first, bad, last)] == ["1st", None, None]


def test_an_entry_expired_on_arrival_is_deleted_on_the_destination_and_its_replica(servers):
    """A master turns an entry whose absolute expiry has passed into a delete, and propagates it
    as one, so a replica (which never expires keys itself) does not keep it."""
    src, dst, rep = servers.start_many(3)
    push_stable(1, src, dst)
    push_migrating(2, src, dst, destination_only=True)
    rep.client().replicaof("127.0.0.1", dst.port)
    k, fresh = keys_in(LOW, HIGH, "exp", 2)
    with RawConnection(dst.port) as r:
        assert r.call("umcluster.import", 0, k, "S", "old") == "OK"
        assert r.call("umcluster.import", 0, k, "S1", "v", fresh, "S", "new") == "OK"
    d = dst.client()
    assert asking_get(dst, k) is None and asking_get(dst, fresh) == "new"
    assert d.dbsize() == 1
    d.execute_command("WAIT", 1, 5000)
    wait_until(lambda: rep.client().execute_command("DEBUG", "DIGEST") == d.execute_command("DEBUG", "DIGEST"),
               timeout=20, what="replica digest equals the destination's")
    assert rep.client().execute_command("DEBUG", "DIGEST-VALUE", k) == d.execute_command("DEBUG", "DIGEST-VALUE", k)
    assert rep.client().dbsize() == 1


def test_moved_strings_keep_the_servers_encodings(servers):
    """Strings travel as themselves, integers as payloads the destination's RESTORE re-encodes:
    `OBJECT ENCODING` is the same on both sides."""
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    values = {"int": "12345", "int2": "-9223372036854775808", "embstr": "hello", "raw": "x" * 100,
              "notint": "007", "plus": "+5"}
    names = dict(zip(values, keys_in(LOW, HIGH, "enc", len(values))))
    for kind, v in values.items():
        c.set(names[kind], v)
    before = {kind: c.object("encoding", names[kind]) for kind in values}
    assert before["int"] == "int" and before["raw"] == "raw" and before["notint"] == "embstr", before
    move_and_commit(src, dst)
    d = dst.client()
    after = {kind: d.object("encoding", names[kind]) for kind in values}
    assert after == before
    assert {kind: d.get(names[kind]) for kind in values} == values


def test_a_destination_without_the_module_gets_plain_restores(servers):
    """The batch command needs the module on the destination; a plain server answers "unknown
    command" and the mover goes on with RESTORE."""
    src = servers.start()
    dst = servers.start(with_module=False)
    push_stable(1, src, dst, source_only=True)
    c = src.client()
    keys = keys_in(LOW, HIGH, "plain", 300)
    for i, k in enumerate(keys):
        c.set(k, i, ex=3600 if i % 2 else None)
    listed = f"{{{keys[0]}}}:list"  # same slot as keys[0]
    c.rpush(listed, "a", "b")
    # A big collection starts in pieces, which a plain server refuses: it goes whole too.
    big = f"{{{keys[0]}}}:big"
    c.hset(big, mapping={f"f{i}": i for i in range(2500)})
    big_before = c.hgetall(big)
    push_migrating(2, src, dst, source_only=True)
    wait_until(lambda: task_done(src), timeout=60, what="migration done with RESTORE")
    d = dst.client()
    assert [d.get(k) for k in keys] == [str(i) for i in range(len(keys))]
    assert d.lrange(listed, 0, -1) == ["a", "b"]
    assert d.hgetall(big) == big_before
    assert all(d.ttl(k) > 0 for k in keys[1::2]) and all(d.ttl(k) == -1 for k in keys[::2])
    assert c.dbsize() == 0
    assert "migrating with RESTORE" in src.log_tail(200), src.log_tail(20)


@pytest.mark.parametrize("delivery", ["import", "restore"])
def test_a_destination_out_of_memory_refuses_batches_and_nothing_is_lost(servers, delivery):
    """OOM is the destination's state, not the key's: the batch waits (its keys stay here,
    fenced) and goes once there is room; no key is let go as one the destination cannot take."""
    src = servers.start()
    # A fresh server's used_memory is above 100 KB: every write is refused with OOM (noeviction).
    dst = servers.start(with_module=delivery == "import",
                        extra_args=["--maxmemory", "100kb", "--maxmemory-policy", "noeviction"])
    push_stable(1, src, dst, source_only=delivery == "restore")
    c = src.client()
    names = keys_in(LOW, HIGH, "oom", 200)
    for k in names:
        c.set(k, k)
    push_migrating(2, src, dst, source_only=delivery == "restore")
    wait_until(lambda: any("OOM" in t.get("last_error", "") for t in migrations(src)), timeout=20,
               what="the destination refused the batch with OOM")
    assert c.dbsize() == len(names) and dst.client().dbsize() == 0
    task = next(t for t in migrations(src) if t["role"] == "migrating")
    assert task["state"] == "retrying" and "refused key" not in task["last_error"], task
    dst.client().config_set("maxmemory", "0")
    wait_until(lambda: task_done(src), timeout=60, what="migration done once memory is there")
    if delivery == "import":
        push_committed(3, src, dst)
    d = dst.client()
    assert [d.get(k) for k in names] == names
    assert c.dbsize() == 0


PIECE_ITEMS = 1000  # ffi::mover::PIECE_ITEMS: bigger collections move in pieces


def fill_big_collections(client, prefix, n):
    """A hash, a set, an integer set, a sorted set and a list of n items each (more than one
    piece), in the moving range, every other one with a TTL; returns their names."""
    names = [f"{{{k}}}:{kind}" for k, kind in zip(keys_in(LOW, HIGH, prefix, 5),
                                                ("hash", "set", "intset", "zset", "list"))]
    h, st, ints, z, lst = names
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, 500):
        part = range(start, min(n, start + 500))
        pipe.hset(h, mapping={f"f{i}": (i if i % 3 else f"v\x00{i}") for i in part})
        pipe.sadd(st, *[f"m{i}" for i in part])
        pipe.sadd(ints, *[i * 1_000_003 - 7 for i in part])
        scores = [float("inf"), float("-inf"), 0.1, 1e300, -5, 2 ** 53 + 1]
        pipe.zadd(z, {f"z{i}": (scores[i] if i < len(scores) else i / 7) for i in part})
        # Duplicates, an empty element, binary bytes: order and multiplicity must survive.
        pipe.rpush(lst, *[("dup" if i % 10 == 0 else "" if i % 10 == 1 else f"e{i}\xff") for i in part])
    for k in names[::2]:
        pipe.expire(k, 3600)
    pipe.execute()
    return names


def fill_big_list(client, k, n):
    """n distinct 100-byte elements (their index, padded), pushed 1,000 at a time."""
    for start in range(0, n, 1000):
        client.rpush(k, *[f"{i:06d}" + "x" * 94 for i in range(start, min(n, start + 1000))])


def test_big_collections_move_in_pieces_with_their_ttls_and_the_destinations_replica_follows(servers):
    src, dst, dst_rep = servers.start_many(3)
    push_stable(1, src, dst)
    dst_rep.client().replicaof("127.0.0.1", dst.port)
    c = src.client()
    # An integer set this big stays an intset (one scan call reads it whole, one piece).
    c.config_set("set-max-intset-entries", "5000")
    names = fill_big_collections(c, "big", 3 * PIECE_ITEMS + 17)
    c3 = src.client(db=3)
    names3 = fill_big_collections(c3, "big3", PIECE_ITEMS + 1)
    small = fill_every_type(c, "small", 2)  # whole, by DUMP
    assert c.object("encoding", names[2]) == "intset"
    before, before3 = snapshot(c, names + small), snapshot(c3, names3)
    move_and_commit(src, dst)
    d, d3 = dst.client(), dst.client(db=3)
    for snap, client in ((before, d), (before3, d3)):
        after = snapshot(client, list(snap))
        for k, (val, ttl) in snap.items():
            assert after[k][0] == val, k
            assert same_ttl(ttl, after[k][1]), (k, ttl, after[k][1])
    # At least three pieces for each of the four of db 0 (3,017 items, a piece holds 1,000 and
    # what the last bucket read adds), the intset's one, one each in db 3.
    assert c.info("umcluster")["umcluster_migration_pieces"] >= 4 * 3 + 1 + 5
    assert c.dbsize() == 0 and c3.dbsize() == 0
    d.execute_command("WAIT", 1, 5000)
    wait_until(lambda: dst_rep.client().execute_command("DEBUG", "DIGEST")
               == d.execute_command("DEBUG", "DIGEST"),
               timeout=30, what="the destination's replica identical to it")


def test_module_type_keys_move_whole_with_their_ttls_and_the_destinations_replica_follows(servers, umtype_module):
    """Keys of a module data type (tests/modules/umtype.c, loaded after umcluster on every node)
    go by the type's own serialization (DUMP/RESTORE), from two databases, with their TTLs; the
    ones of the range that stays stay; the destination's replica ends identical to it."""
    src, dst, dst_rep = servers.start_many(3, extra_args=["--loadmodule", umtype_module])
    push_stable(1, src, dst)
    dst_rep.client().replicaof("127.0.0.1", dst.port)
    moving, staying = {}, {}
    for db in (0, 3):
        c = src.client(db=db)
        for i, k in enumerate(keys_in(LOW, HIGH, f"mt{db}", 40)):
            c.execute_command("UMTYPE.SET", k, f"value {db} {i} " + "x" * i)
            if i % 2:
                c.expire(k, 3600)
            moving[(db, k)] = (f"value {db} {i} " + "x" * i, c.pttl(k))
        for k in keys_in(HIGH + 1, 15999, f"stay{db}", 5):
            c.execute_command("UMTYPE.SET", k, "stays")
            staying[(db, k)] = "stays"
    assert src.client().type(next(k for (db, k) in moving if db == 0)) == "umtype-v1"
    move_and_commit(src, dst)
    assert src.client().info("umcluster")["umcluster_migration_keys_moved"] == len(moving)
    for (db, k), (val, ttl) in moving.items():
        d = dst.client(db=db)
        assert d.execute_command("UMTYPE.GET", k) == val, (db, k)
        assert d.type(k) == "umtype-v1"
        assert same_ttl(ttl, d.pttl(k)), (db, k, ttl, d.pttl(k))
    for (db, k), val in staying.items():
        assert src.client(db=db).execute_command("UMTYPE.GET", k) == val, (db, k)
    for db in (0, 3):
        left = [k for k in src.client(db=db).scan_iter(count=1000) if key_slot(k) <= HIGH]
        assert left == [], f"db {db}: keys left on the source"
    d = dst.client()
    d.execute_command("WAIT", 1, 5000)
    wait_until(lambda: dst_rep.client().execute_command("DEBUG", "DIGEST")
               == d.execute_command("DEBUG", "DIGEST"),
               timeout=30, what="the destination's replica identical to it")


@pytest.mark.parametrize("delivery", ["import", "restore"])
def test_a_key_the_destination_cannot_take_stays_usable_here_and_the_rest_moves(servers, umtype_module, delivery):
    """The destination lacks the module type of a few keys (RESTORE answers "Bad data format"):
    it takes every other key of their batches; the refused keys stay on the source, readable and
    writable (not held back), the move shows the error and stays open; once the destination
    loads the type, they move too, with the values written meanwhile. The same for a destination
    without umcluster, which gets one RESTORE per key."""
    src = servers.start(extra_args=["--loadmodule", umtype_module])
    dst = servers.start(with_module=delivery == "import")
    push_stable(1, src, dst, source_only=delivery == "restore")
    c = src.client()
    strings = keys_in(LOW, HIGH, "plain", 600)
    for k in strings:
        c.set(k, "v:" + k)
    typed = keys_in(LOW, HIGH, "typed", 3)
    for k in typed:
        c.execute_command("UMTYPE.SET", k, "before " + k)
    push_migrating(2, src, dst, source_only=delivery == "restore")
    wait_until(lambda: c.dbsize() == len(typed), timeout=60,
               what="everything but the refused keys moved")
    d = dst.client()
    assert d.dbsize() == len(strings)
    assert sorted(k for k in c.scan_iter(count=1000)) == sorted(typed)
    task = next(t for t in migrations(src) if t["role"] == "migrating")
    assert task["state"] != "done"
    assert "refused key 'typed" in task["last_error"] and "Bad data format" in task["last_error"], task
    for k in typed:
        # Not fenced: written here while the destination cannot take them.
        assert c.execute_command("UMTYPE.SET", k, "after " + k) == "OK"
        assert c.execute_command("UMTYPE.GET", k) == "after " + k
    assert not task_done(src)
    wait_until(lambda: next(t for t in migrations(src) if t["role"] == "migrating")["keys_per_sec"] == "0",
               timeout=10, what="no rate shown while nothing moves")
    d.execute_command("MODULE", "LOAD", umtype_module)
    wait_until(lambda: task_done(src), timeout=60, what="the refused keys moved once the type is there")
    if delivery == "import":
        push_committed(3, src, dst)
    assert c.dbsize() == 0
    assert [d.get(k) for k in strings] == ["v:" + k for k in strings]
    for k in typed:
        assert d.execute_command("UMTYPE.GET", k) == "after " + k


def test_collections_whose_dump_the_destination_refuses_move_in_pieces(servers):
    """A destination that refuses every DUMP payload (here RESTORE is renamed away; a destination
    of an older Redis version refuses a newer one's payloads the same way) still gets every
    hash, set, sorted set, list and stream, small ones included, with their TTLs: a collection
    whose DUMP was refused goes in pieces the next time the scan meets it."""
    src = servers.start()
    dst = servers.start(extra_args=["--rename-command", "RESTORE", ""])
    push_stable(1, src, dst)
    c = src.client()
    collections = keys_in(LOW, HIGH, "coll", 50)
    for i, k in enumerate(collections):
        kind = i % 5
        if kind == 0:
            c.hset(k, mapping={"f1": "a" + k, "f2": "b"})
        elif kind == 1:
            c.sadd(k, "m1", "m2" + k)
        elif kind == 2:
            c.zadd(k, {"m1": 1.5, "m2" + k: -2})
        elif kind == 3:
            c.rpush(k, "e1", "e2" + k, "e1")
        else:
            c.xadd(k, {"f": "v" + k}, id="1-1")
            c.xadd(k, {"f": "w"}, id="2-5")
        if i % 3 == 0:
            c.expire(k, 3600)
    strings = keys_in(LOW, HIGH, "str", 100)
    for k in strings:
        c.set(k, "text " + k)
    before = {k: (value(c, k), c.pttl(k)) for k in collections}
    pieces_before = c.info("umcluster")["umcluster_migration_pieces"]
    move_and_commit(src, dst)
    d = dst.client()
    for k, (val, ttl) in before.items():
        assert value(d, k) == val, k
        assert same_ttl(ttl, d.pttl(k)), (k, ttl, d.pttl(k))
    assert [d.get(k) for k in strings] == ["text " + k for k in strings]
    assert c.dbsize() == 0
    stats = c.info("umcluster")
    assert stats["umcluster_migration_pieces"] - pieces_before >= len(collections)
    assert stats["umcluster_migration_errors"] >= len(collections)


def stream_state(client, k):
    info = client.xinfo_stream(k)
    return {f: info[f] for f in ("length", "last-generated-id", "max-deleted-entry-id",
                                 "entries-added", "groups")}


def test_a_big_stream_moves_in_pieces_with_its_state_and_one_with_groups_goes_whole(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    plain, grouped = [f"{{{k}}}:stream" for k in keys_in(LOW, HIGH, "bigstream", 2)]
    for k in (plain, grouped):
        pipe = c.pipeline(transaction=False)
        for i in range(3 * PIECE_ITEMS + 5):
            fields = {"n": i, "payload": "p" * (i % 50)} if i % 3 else {"only": i}
            pipe.xadd(k, fields, id=f"{1000 + i // 4}-{i % 4}")
        pipe.execute()
        # Deleted entries (one of them the newest) leave the stream's state apart from its
        # entries: what XSETID must carry over.
        c.xdel(k, "1000-1", f"{1000 + (3 * PIECE_ITEMS + 4) // 4}-{(3 * PIECE_ITEMS + 4) % 4}")
    c.xgroup_create(grouped, "g", id="0")
    c.xreadgroup("g", "alice", {grouped: ">"}, count=7)
    c.expire(plain, 3600)
    before = snapshot(c, [plain, grouped])
    states = {k: stream_state(c, k) for k in (plain, grouped)}
    pending = c.xpending(grouped, "g")
    move_and_commit(src, dst)
    d = dst.client()
    after = snapshot(d, [plain, grouped])
    for k in (plain, grouped):
        assert after[k][0] == before[k][0], k
        assert same_ttl(before[k][1], after[k][1]), k
        assert stream_state(d, k) == states[k], k
    assert d.xpending(grouped, "g") == pending, "the group went whole, pending entries included"
    # The plain stream's entries in pieces of 1,000 (and its state in the last): at least 3.
    assert c.info("umcluster")["umcluster_migration_pieces"] >= 3
    new_id = d.xadd(plain, {"after": 1}, id="*")
    last = states[plain]["last-generated-id"]
    assert tuple(map(int, new_id.split("-"))) > tuple(map(int, last.split("-")))
    assert c.dbsize() == 0


def test_clients_reading_a_big_collection_while_it_moves_never_see_a_part_of_it(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    n = 20 * PIECE_ITEMS
    h, lst = [f"{{{k}}}:{kind}" for k, kind in zip(keys_in(LOW, HIGH, "readbig", 2), ("hash", "list"))]
    for start in range(0, n, 1000):
        c.hset(h, mapping={f"f{i}": i for i in range(start, start + 1000)})
        c.rpush(lst, *range(start, start + 1000))
    wrong = []

    def step(cc, i):
        j = (i * 7919) % n
        got = (cc.hlen(h), cc.hget(h, f"f{j}"), cc.llen(lst), cc.lindex(lst, j))
        if got != (n, str(j), n, str(j)):
            wrong.append((i, got))

    with ClusterLoad(src, step) as load:
        wait_until(lambda: load.steps > 20, timeout=20, what="reads running")
        before = load.steps
        # Ticks 20 ms apart: the two keys' 40 pieces take about a second to go.
        push_migrating(2, src, dst, config=("migration_scan_interval", 20000))
        wait_until(lambda: task_done(src), timeout=120, what="migration done under reads")
        during = load.steps - before
        push_committed(3, src, dst)
        wait_until(lambda: load.steps > before + during + 20, timeout=20, what="reads after the commit")
    assert load.errors == [], load.errors[:5]
    assert wrong == [], wrong[:5]
    assert during > 50, f"only {during} reads overlapped the move"
    assert c.info("umcluster")["umcluster_migration_pieces"] >= 40
    assert c.dbsize() == 0


def test_a_collection_of_few_but_big_items_moves_in_pieces_too(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    heavy_hash, heavy_list, light = [f"{{{k}}}:{kind}" for k, kind in zip(
        keys_in(LOW, HIGH, "heavy", 3), ("hash", "list", "light"))]
    # 200 items of 50 KB: 10 MB in all, more than a DUMP should copy at once.
    for start in range(0, 200, 50):
        c.hset(heavy_hash, mapping={f"f{i}": f"{i:05d}" + "h" * 50_000 for i in range(start, start + 50)})
        c.rpush(heavy_list, *[f"{i:05d}" + "l" * 50_000 for i in range(start, start + 50)])
    c.hset(light, mapping={f"f{i}": i for i in range(500)})  # 500 small items: whole
    c.expire(heavy_list, 3600)
    names = [heavy_hash, heavy_list, light]
    before = snapshot(c, names)
    move_and_commit(src, dst)
    after = snapshot(dst.client(), names)
    for k in names:
        assert after[k][0] == before[k][0], k
        assert same_ttl(before[k][1], after[k][1]), k
    # Pieces hold at most 1 MB (and one item more): at least ten for each heavy key, none for
    # the light one.
    assert c.info("umcluster")["umcluster_migration_pieces"] >= 20
    assert c.dbsize() == 0


def test_a_big_collection_refused_midway_starts_over_and_arrives_exact(servers):
    src = servers.start()
    dst = servers.start(extra_args=["--maxmemory-policy", "noeviction"])
    push_stable(1, src, dst)
    c = src.client()
    n = 20 * PIECE_ITEMS
    lst = keys_in(LOW, HIGH, "biglist", 1)[0]
    fill_big_list(c, lst, n)
    expected = c.lrange(lst, 0, -1)
    # Room for a part of the list (2 MB in all, pieces of 100 KB) on the destination, then OOM.
    used = dst.client().info("memory")["used_memory"]
    dst.client().config_set("maxmemory", used + 1_000_000)
    push_migrating(2, src, dst)
    wait_until(lambda: any("OOM" in t.get("last_error", "") for t in migrations(src)), timeout=20,
               what="the destination refused a piece with OOM")
    with RawConnection(dst.port) as r:
        assert r.call("ASKING") == "OK"
        held = r.call("LLEN", lst)
    assert 0 < held < n, "a part of the list is on the destination"
    with RawConnection(src.port) as r:
        # The list is on its way: no writes, reads as before.
        assert r.call("RPUSH", lst, "late") == TRYAGAIN
        assert r.call("LLEN", lst) == n
    dst.client().config_set("maxmemory", "0")
    wait_until(lambda: task_done(src), timeout=60, what="migration done once memory is there")
    push_committed(3, src, dst)
    # Started over from its first piece, which replaced the part already there: nothing twice.
    assert dst.client().lrange(lst, 0, -1) == expected
    assert c.dbsize() == 0


def test_a_big_collection_that_expires_midway_is_removed_from_the_destination_too(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    big = keys_in(LOW, HIGH, "bigttl", 1)[0]
    # 15 MB in pieces of 1 MB: a few are on their way (4 MB at most) when it expires here.
    for start in range(0, 3000, 500):
        c.hset(big, mapping={f"f{i}": "x" * 5000 for i in range(start, start + 500)})
    c.pexpire(big, 1500)
    open_with_paused_destination(src, dst, 2500)
    wait_fenced(src, big)

    def held_back():
        # Expired here while part of it may be on the destination: a read waits rather than
        # being sent there (until the destination's part is removed).
        with RawConnection(src.port) as r:
            return r.call("HGET", big, "f1") == TRYAGAIN
    wait_until(held_back, timeout=10, what="a read of the expired hash held back")
    wait_until(lambda: task_done(src), timeout=60, what="migration done")
    push_committed(3, src, dst)
    assert dst.client().exists(big) == 0, "the part that arrived was removed"
    assert c.dbsize() == 0


def test_the_destination_replays_the_imports_from_its_aof(servers):
    """The batches are in the destination's AOF as they arrived; replaying it (loading, never
    checked or redirected) rebuilds the same data."""
    import glob

    src = servers.start()
    dst = servers.start(extra_args=["--appendonly", "yes"])
    push_stable(1, src, dst)
    c = src.client()
    names = keys_in(LOW, HIGH, "aof", 300)
    pipe = c.pipeline(transaction=False)
    for i, k in enumerate(names):
        if i % 3 == 0:
            pipe.set(k, i, ex=3600)  # integer-like: travels as a payload
        elif i % 3 == 1:
            pipe.set(k, f"v{i}" * 20)
        else:
            pipe.hset(k, mapping={"a": i, "b": "x"})
    pipe.execute()
    move_and_commit(src, dst)
    d = dst.client()
    digest = d.execute_command("DEBUG", "DIGEST")
    assert d.dbsize() == len(names)
    d.execute_command("DEBUG", "LOADAOF")
    assert d.execute_command("DEBUG", "DIGEST") == digest
    assert d.dbsize() == len(names) and d.ttl(names[0]) > 3000
    aof = b"".join(open(p, "rb").read() for p in glob.glob(f"{dst.dir}/**/*.aof", recursive=True))
    assert b"umcluster.import" in aof


def test_a_restarted_source_resumes_the_move_from_its_config_file(servers, tmp_path):
    path = str(tmp_path / "src.json")
    src = servers.start(extra_args=["config-file", path, "--appendonly", "yes"])
    dst = servers.start()
    push_stable(1, src, dst)
    c = src.client()
    names = keys_in(LOW, HIGH, "rs", 500)
    pipe = c.pipeline(transaction=False)
    for k in names:
        pipe.set(k, k, ex=3600)
    pipe.execute()
    dst_port = dst.port
    dst.stop()
    push_migrating(2, src, dst, source_only=True)
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="move held open by the missing destination")
    src.restart()
    # Back with its table: the migration task is there again, still waiting for the destination.
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="task resumed after the restart")
    dst.start(port=dst_port)
    push_migrating(3, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="move finished after the restart")
    push_committed(4, src, dst)
    cc = src.cluster_client()
    assert [cc.get(k) for k in names] == names
    assert all(cc.ttl(k) > 0 for k in names[:20])


TRYAGAIN = Err("TRYAGAIN Multiple keys request during rehashing of slot")


def open_with_paused_destination(src, dst, pause_ms):
    """Destination importing and paused (it takes the mover's connection but answers nothing),
    then the source migrating: the first batch is on its way and cannot be acknowledged."""
    push_migrating(2, src, dst, destination_only=True)
    dst.client().execute_command("CLIENT", "PAUSE", pause_ms, "ALL")
    push_migrating(2, src, dst, source_only=True)


def wait_fenced(src, key):
    """Until a write of `key` on the source answers TRYAGAIN (its copy is on its way)."""
    def fenced():
        with RawConnection(src.port) as r:
            return r.call("SETRANGE", key, 0, "") == TRYAGAIN
    wait_until(fenced, timeout=10, what=f"{key} fenced on the source")


def test_keys_on_their_way_take_no_writes_until_the_destination_answers(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    keys = keys_in(LOW, HIGH, "f", 20)
    for k in keys:
        c.set(k, "old")
    h = keys_in(LOW, HIGH, "fh", 1)[0]
    c.hset(h, mapping={"a": "1"})
    absent = keys_in(LOW, HIGH, "nothere", 1)[0]
    open_with_paused_destination(src, dst, 2500)
    wait_fenced(src, keys[1])
    with RawConnection(src.port) as r:
        # Reads of a key whose copy is on its way are served here: the value cannot change.
        assert r.call("GET", keys[1]) == "old"
        for cmd in (("SET", keys[1], "new"), ("INCR", keys[2]), ("DEL", keys[3]),
                    ("EXPIRE", keys[4], 10), ("HSET", h, "b", "2")):
            assert r.call(*cmd) == TRYAGAIN, cmd
        # A key that is not here still goes to the destination.
        assert r.call("GET", absent) == Err(f"ASK {key_slot(absent)} {dst.addr}")
    assert src.client().info("umcluster")["umcluster_migration_fenced"] >= 5
    # The destination answers: the keys move, with the values they had when they were fenced.
    wait_until(lambda: task_done(src), timeout=30, what="migration done")
    with RawConnection(src.port) as r:
        assert r.call("SET", keys[1], "new") == Err(f"ASK {key_slot(keys[1])} {dst.addr}")
    push_committed(3, src, dst)
    d = dst.client()
    assert [d.get(k) for k in keys] == ["old"] * len(keys)
    assert d.hgetall(h) == {"a": "1"}
    assert src.client().dbsize() == 0


def thread_nice_values(pid):
    """{thread name: [nice value, ...]} of a process's threads, from /proc."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        # Fields after the name start at field 3 (state); the nice value is field 19.
        out.setdefault(name, []).append(int(stat[stat.rindex(")") + 2:].split()[16]))
    return out


def test_the_movers_threads_yield_the_cpu_to_the_servers_main_thread(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    keys = keys_in(LOW, HIGH, "n", 5)
    for k in keys:
        src.client().set(k, "v")
    open_with_paused_destination(src, dst, 3000)
    wait_fenced(src, keys[0])  # a batch is written: the sender and its reader are up
    nice = thread_nice_values(src.proc.pid)
    main = nice["redis-server"][0]
    # Thread names are cut to 15 bytes: "umcluster-migrate-tx" and "-rx" both read like this.
    movers = nice.get("umcluster-migra", [])
    assert len(movers) == 2, nice
    assert movers == [min(main + 10, 19)] * 2, nice
    wait_until(lambda: task_done(src), timeout=30, what="migration done")


def test_keys_removed_here_while_on_their_way_are_removed_on_the_destination_too(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    keys = keys_in(LOW, HIGH, "t", 10)
    for k in keys:
        c.set(k, "v")
    open_with_paused_destination(src, dst, 2000)
    wait_fenced(src, keys[0])
    # Gone here behind the fence (FLUSHDB touches no key the router sees): the destination is
    # about to get a copy, so a read must not be sent there (it would find the copy) -- it waits.
    assert c.flushdb()
    with RawConnection(src.port) as r:
        assert r.call("GET", keys[0]) == TRYAGAIN
    wait_until(lambda: task_done(src), timeout=30, what="migration done")
    push_committed(3, src, dst)
    # The copies were followed by tombstones: nothing comes back.
    d = dst.client()
    assert [d.exists(k) for k in keys] == [0] * len(keys), migrations(src)
    assert d.dbsize() == 0


def test_a_slot_with_a_cached_ask_still_holds_back_reads_of_keys_on_their_way(servers):
    """Once a slot has answered ASK (the reply is cached per slot), a key of that slot that is
    gone here but whose copy is still on its way must wait (TRYAGAIN), not be sent to the
    destination by the cached ASK; keys that were never here still get the ASK."""
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    tag = keys_in(LOW, HIGH, "slot", 1)[0]
    keys = [f"{{{tag}}}:{i}" for i in range(10)]  # one slot
    for k in keys:
        c.set(k, "v")
    never = f"{{{tag}}}:never-here"
    open_with_paused_destination(src, dst, 2000)
    wait_fenced(src, keys[0])
    ask = Err(f"ASK {key_slot(never)} {dst.addr}")
    with RawConnection(src.port) as r:
        for _ in range(2):  # the first ASK is cached, the second replays it
            assert r.call("GET", never) == ask
        assert c.flushdb()  # gone here behind the fence
        for _ in range(2):
            assert r.call("GET", keys[0]) == TRYAGAIN
            assert r.call("GET", never) == ask
    wait_until(lambda: task_done(src), timeout=30, what="migration done")
    push_committed(3, src, dst)
    assert dst.client().dbsize() == 0


def test_batches_a_failed_destination_may_have_received_stay_fenced_and_are_sent_again(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    keys = keys_in(LOW, HIGH, "k", 30)
    for k in keys:
        c.set(k, "v1")
    dst_port = dst.port
    open_with_paused_destination(src, dst, 60_000)
    wait_fenced(src, keys[0])
    # The destination dies with the batch written to it and unanswered.
    dst.stop()
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="source noticed the destination is gone")
    with RawConnection(src.port) as r:
        assert r.call("SET", keys[0], "v2") == TRYAGAIN, "it may be on the destination: still fenced"
        assert r.call("GET", keys[0]) == "v1"
    dst.start(port=dst_port)
    push_migrating(3, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="migration done after the destination came back")
    push_committed(4, src, dst)
    d = dst.client()
    assert [d.get(k) for k in keys] == ["v1"] * len(keys)
    assert src.client().dbsize() == 0


def test_a_big_collection_whose_destination_dies_midway_starts_over(servers):
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client()
    lst = keys_in(LOW, HIGH, "dies", 1)[0]
    n = 50 * PIECE_ITEMS  # 5 MB: more than the 4 MB the mover keeps on their way
    fill_big_list(c, lst, n)
    expected = c.lrange(lst, 0, -1)
    dst_port = dst.port
    open_with_paused_destination(src, dst, 60_000)
    wait_fenced(src, lst)
    wait_until(lambda: c.info("umcluster")["umcluster_migration_pieces"] >= 3, timeout=10,
               what="pieces on their way")
    # The destination dies with pieces written to it and unanswered.
    dst.stop()
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="source noticed the destination is gone")
    with RawConnection(src.port) as r:
        assert r.call("RPUSH", lst, "late") == TRYAGAIN
        assert r.call("LLEN", lst) == n
    dst.start(port=dst_port)
    push_migrating(3, src, dst)
    wait_until(lambda: task_done(src), timeout=60, what="migration done after the destination came back")
    push_committed(4, src, dst)
    assert dst.client().lrange(lst, 0, -1) == expected
    assert c.dbsize() == 0


def test_a_destination_that_requires_a_password_gets_the_sources_masterauth(servers):
    src, dst = servers.start_many(2)
    dst.client().config_set("requirepass", "s3cret")
    dst.password = "s3cret"
    push_stable(1, src, dst)
    c = src.client()
    keys = keys_in(LOW, HIGH, "pw", 50)
    for k in keys:
        c.set(k, "v")
    # Without credentials the destination refuses the mover's batches (NOAUTH, or a protocol
    # error for a command of more than 10 arguments before AUTH): nothing moves, nothing is lost.
    push_migrating(2, src, dst)
    wait_until(lambda: any(t["state"] == "retrying" for t in migrations(src)), timeout=20,
               what="the destination refused the mover")
    (task,) = migrations(src)
    assert "NOAUTH" in task["last_error"] or "unauthenticated" in task["last_error"], task
    assert c.dbsize() == len(keys)
    # The credentials a replica would use towards a master are the mover's too.
    c.config_set("masterauth", "s3cret")
    wait_until(lambda: task_done(src), timeout=30, what="migration done with masterauth")
    push_committed(3, src, dst)
    d = dst.client(password="s3cret")
    assert [d.get(k) for k in keys] == ["v"] * len(keys)
    assert c.dbsize() == 0


def test_string_values_of_every_length_form_arrive_byte_for_byte(servers):
    """The mover builds string payloads itself (the destination's RESTORE checks them): every RDB
    length form, binary bytes, integers and embedded strings arrive exactly, with their TTLs."""
    src, dst = servers.start_many(2)
    push_stable(1, src, dst)
    c = src.client(decode_responses=False)
    sizes = [0, 1, 20, 44, 45, 63, 64, 100, 16383, 16384, 70000, 3_000_000]
    names = keys_in(LOW, HIGH, "len", len(sizes) + 3)
    expected = {}
    for k, n in zip(names, sizes):
        expected[k] = bytes((i * 31 + n) % 256 for i in range(n))
    ints = names[len(sizes):]
    for k, v in zip(ints, (b"12345", b"-7", b"9223372036854775807")):
        expected[k] = v
    for i, (k, v) in enumerate(expected.items()):
        c.set(k, v, px=3_600_000 if i % 2 else None)
    ttls = {k: c.pttl(k) for k in expected}
    move_and_commit(src, dst)
    d = dst.client(decode_responses=False)
    for k, v in expected.items():
        assert d.get(k) == v, (k, len(v))
        assert same_ttl(d.pttl(k), ttls[k]), (k, d.pttl(k), ttls[k])
    assert src.client().dbsize() == 0

"""Moving slots with the admin tool (issue 4): `umcluster migrate`, `add-node`, `rebalance`.

The tool marks the slots migrating/importing, the source module moves the keys itself, the tool
polls progress and commits. Checked end to end, with real servers and real clients:
- under continuous redis-py `RedisCluster` load (INCR counters, new keys with and without TTL,
  DELs) while half of a loaded node's slots move: every acknowledged increment is there, every
  key sits on the node that owns its slot in the final table, TTLs survived, deleted keys stay
  deleted, and the clients saw no error (redis-py follows ASK/MOVED/TRYAGAIN by itself);
- the tool SIGKILLed in the middle of a move (the destination paused so the move cannot finish
  under it), then run again: it resumes, exits 0, nothing is lost; a third run says the move is
  already committed;
- the destination down in the middle of a move: the tool keeps waiting and shows the task
  retrying, the destination comes back, the move completes, nothing is lost;
- add-node + rebalance turn 3 masters into 4 with 4096 slots each, data reachable, check clean;
- the refusals that need no key moving (joining node with keys or in another cluster, a target
  that is not a member, an open migration for other slots, nodes that disagree).
"""

import os
import signal
import subprocess
import threading

import pytest
from redis.cluster import RedisCluster

from conftest import HOST, RawConnection, key_slot, raw, umcluster, wait_until
import conftest

#: Tests that need the source module to move keys (`UMCTL MIGRATIONS`, branch `migrate`).
needs_mover = pytest.mark.usefixtures()  # the mover has landed (kept as a marker of what needs it)


def output(proc):
    return proc.stdout + proc.stderr


def ok(proc):
    assert proc.returncode == 0, output(proc)
    return proc.stdout


def tool(*args):
    """Runs the tool, bounded by a deadline generous enough for every move of this file."""
    return umcluster(*args, timeout=120)


class Background:
    """The tool running in the background (stdout is a pipe: plain progress lines), its output
    collected line by line by a reader thread so a test can wait for a line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [conftest.UMCLUSTER_BIN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait(self, timeout):
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(timeout=10)


def create(servers, n):
    nodes = servers.start_many(n)
    ok(tool("create", *[s.addr for s in nodes]))
    return nodes


def slot_owners(node):
    """Slot -> port, from `CLUSTER SLOTS` of `node`."""
    owners = {}
    for start, end, master, *_ in node.client().execute_command("CLUSTER SLOTS"):
        for s in range(int(start), int(end) + 1):
            owners[s] = int(master[1])
    return owners


def slots_owned(node):
    return int(
        [l for l in raw(node, "INFO", "umcluster").splitlines() if l.startswith("umcluster_slots_owned:")][0]
        .split(":")[1]
    )


def keys_of(node):
    """Every key a node holds (SCAN: no key argument, so no routing)."""
    return set(node.client().scan_iter(count=1000))


def assert_every_key_on_its_owner(nodes):
    owners = slot_owners(nodes[0])
    for n in nodes:
        assert slot_owners(n) == owners, f"{n.addr} disagrees about the final table"
    total = 0
    for n in nodes:
        keys = keys_of(n)
        total += len(keys)
        stray = [k for k in keys if owners.get(key_slot(k)) != n.port]
        assert not stray, f"{n.addr} holds {len(stray)} keys of slots it does not own, e.g. {stray[:5]}"
    return total


def migrations(node):
    """`UMCTL MIGRATIONS` of a node as a list of dicts."""
    out = []
    for entry in raw(node, "UMCTL", "MIGRATIONS"):
        out.append(dict(zip(entry[0::2], entry[1::2])))
    return out


def task_seen(src, moved_at_least=1):
    tasks = migrations(src)
    return any(int(t.get("keys_moved", 0)) >= moved_at_least for t in tasks)


def commit_finished(src, dst, lo, hi):
    return all(slot_owners(n).get(s) == dst.port for n in (src, dst) for s in (lo, hi))


def single_node_with_keys(servers, keys, config=False):
    """One node owning every slot and holding `keys` keys (`key:0`...), via create + POPULATE."""
    extra = ["config-file", os.path.join(servers.workdir, "a.json")] if config else []
    a = servers.start(extra_args=extra)
    ok(tool("create", a.addr))
    assert raw(a, "DEBUG", "POPULATE", str(keys), "key", "10") == "OK"
    return a


def join(servers, seed, config_name=None):
    extra = ["config-file", os.path.join(servers.workdir, config_name)] if config_name else []
    b = servers.start(extra_args=extra)
    out = ok(tool("add-node", b.addr, seed.addr))
    assert "joined" in out
    return b


# ---------------------------------------------------------------------------------------------
# Without key moving: add-node and the refusals
# ---------------------------------------------------------------------------------------------


def test_add_node_joins_with_no_slots_and_refuses_unfit_nodes(servers):
    a, b, c = create(servers, 3)
    epoch = raw(a, "UMCTL", "GETEPOCH")
    d = servers.start()
    out = ok(tool("add-node", d.addr, a.addr))
    assert d.addr in out
    for n in (a, b, c, d):
        assert raw(n, "UMCTL", "GETEPOCH") == epoch + 1
        assert d.addr in raw(n, "CLUSTER", "NODES")
    assert slots_owned(d) == 0
    # The new node redirects to the owners like everybody else.
    with RawConnection(d.port) as conn:
        reply = conn.call("GET", "somekey")
        assert reply.startswith("MOVED ") and any(reply.endswith(n.addr) for n in (a, b, c)), reply
    # check: all nodes agree, all slots covered (a master with no slots is fine).
    ok(tool("check", a.addr))
    # Again: already a member, harmless.
    assert "already a member" in ok(tool("add-node", d.addr, b.addr))

    # A node holding keys is refused, nothing pushed.
    loaded = servers.start()
    assert raw(loaded, "DEBUG", "POPULATE", "5") == "OK"
    refused = tool("add-node", loaded.addr, a.addr)
    assert refused.returncode != 0 and "5 keys" in output(refused), output(refused)
    assert raw(loaded, "UMCTL", "GETEPOCH") == 0
    # A node of another cluster is refused.
    other = servers.start()
    ok(tool("create", "--name", "other", other.addr))
    refused = tool("add-node", other.addr, a.addr)
    assert refused.returncode != 0 and "other" in output(refused), output(refused)
    assert raw(a, "UMCTL", "GETEPOCH") == epoch + 2


def test_migrate_refusals_and_already_committed(servers):
    a, b, c = create(servers, 3)
    outsider = servers.start()
    epoch = raw(a, "UMCTL", "GETEPOCH")

    # Slots the target already owns: nothing to move, success.
    out = ok(tool("migrate", "--slots", "0-100", "--to", a.addr, b.addr))
    assert "already committed" in out
    # Not a member.
    r = tool("migrate", "--slots", "0-100", "--to", outsider.addr, a.addr)
    assert r.returncode != 0 and "add-node" in output(r), output(r)
    # Bad slots.
    r = tool("migrate", "--slots", "100-0", "--to", b.addr, a.addr)
    assert r.returncode != 0
    assert [raw(n, "UMCTL", "GETEPOCH") for n in (a, b, c)] == [epoch] * 3

    # Another migration open (pushed by hand: 0-10 from a to c): a different move is refused.
    e = epoch + 1
    meta = [str(e), a.addr, a.addr, c.addr, c.addr]
    views = {
        a: [a.addr, "1", "11-5460", a.addr, "migrating", "1", "0-10", *meta,
            "PEER", b.addr, "1", "5461-10922", c.addr, "1", "10923-16383", c.addr, "importing", "1", "0-10", *meta],
        c: [c.addr, "1", "10923-16383", c.addr, "importing", "1", "0-10", *meta,
            "PEER", a.addr, "1", "11-5460", a.addr, "migrating", "1", "0-10", *meta, b.addr, "1", "5461-10922"],
        b: [b.addr, "1", "5461-10922", "PEER", a.addr, "1", "11-5460", a.addr, "migrating", "1", "0-10", *meta,
            c.addr, "1", "10923-16383", c.addr, "importing", "1", "0-10", *meta],
    }
    for n, body in views.items():
        assert raw(n, "UMCTL", "SETCLUSTER", "v2", str(e), "NOFLAG", "umcluster", *body) == "OK"
    r = tool("migrate", "--slots", "20-30", "--to", b.addr, a.addr)
    assert r.returncode != 0 and "another migration is open" in output(r), output(r)
    r = tool("rebalance", a.addr)
    assert r.returncode != 0 and "migration is open" in output(r), output(r)
    assert [raw(n, "UMCTL", "GETEPOCH") for n in (a, b, c)] == [e] * 3

    # Nodes that disagree (b forced onto a table where it owns everything) are refused.
    assert raw(b, "UMCTL", "SETCLUSTER", "v2", str(e + 1), "NOFLAG", "umcluster", b.addr, "1", "0-16383") == "OK"
    r = tool("migrate", "--slots", "20-30", "--to", c.addr, a.addr)
    assert r.returncode != 0 and "disagree" in output(r), output(r)


def test_rebalance_dry_run_prints_the_plan_and_moves_nothing(servers):
    a, b, c = create(servers, 3)
    d = join(servers, a)
    epoch = raw(a, "UMCTL", "GETEPOCH")
    out = ok(tool("rebalance", "--dry-run", a.addr))
    assert "plan (3 move(s))" in out, out
    assert out.count(f"-> {d.addr}") == 3, out
    assert "dry run" in out
    assert [raw(n, "UMCTL", "GETEPOCH") for n in (a, b, c, d)] == [epoch] * 4
    assert slots_owned(d) == 0


# ---------------------------------------------------------------------------------------------
# Moving keys (needs the mover in the module)
# ---------------------------------------------------------------------------------------------


class Load:
    """Client threads (redis-py RedisCluster) doing INCR on counters, SET of new keys (every
    other one with a TTL) and DEL of preloaded keys; every exception is kept."""

    def __init__(self, seed, pre_keys, threads=3):
        self.seed = seed
        self.pre_keys = pre_keys
        self.stop = threading.Event()
        self.errors = []
        self.acked = {}  # counter key -> acknowledged increments
        self.written = {}  # new key -> (value, has_ttl)
        self.deleted = set()
        self.ops = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.work, args=(i, threads), daemon=True) for i in range(threads)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def work(self, i, n_threads):
        client = RedisCluster(host=HOST, port=self.seed.port, decode_responses=True, socket_timeout=10)
        to_delete = self.pre_keys[i::n_threads]
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                try:
                    counter = f"cnt:{i}:{n % 64}"
                    client.incr(counter)
                    with self.lock:
                        self.acked[counter] = self.acked.get(counter, 0) + 1
                    key = f"new:{i}:{n}"
                    ttl = n % 2 == 0
                    client.set(key, f"v{n}", ex=3600 if ttl else None)
                    with self.lock:
                        self.written[key] = (f"v{n}", ttl)
                    if n % 3 == 0 and to_delete:
                        victim = to_delete.pop()
                        client.delete(victim)
                        with self.lock:
                            self.deleted.add(victim)
                    with self.lock:
                        self.ops += 1
                except Exception as e:  # every error counts: redis-py retries what can be
                    with self.lock:
                        self.errors.append(repr(e))
                    if len(self.errors) > 50:
                        return
        finally:
            client.close()


@needs_mover
def test_migrate_under_load_loses_nothing(servers):
    a, b, c = create(servers, 3)
    seed_client = a.cluster_client()
    pre = {}
    pipe = seed_client.pipeline()
    for i in range(3000):
        k = f"pre:{i}"
        pre[k] = f"p{i}"
        pipe.set(k, pre[k], ex=3600 if i % 4 == 0 else None)
    pipe.execute()
    half = (0, 2730)  # half of a's 0-5460
    on_a = [k for k in pre if half[0] <= key_slot(k) <= half[1]]
    assert len(on_a) > 300

    with Load(a, list(pre)) as load:
        wait_until(lambda: load.ops > 50, timeout=30, what="client load running")
        ops_before = load.ops
        out = ok(tool("migrate", "--slots", f"{half[0]}-{half[1]}", "--to", b.addr, c.addr))
        wait_until(lambda: load.ops > ops_before + 50, timeout=30, what="client load after the move")
    assert "committed" in out, out
    assert load.ops > ops_before, "the load must run during the move"
    assert load.errors == [], load.errors[:10]

    total = assert_every_key_on_its_owner([a, b, c])
    assert slots_owned(a) == 5461 - 2731 and slots_owned(b) == 5462 + 2731
    client = c.cluster_client()
    for counter, n in load.acked.items():
        assert client.get(counter) == str(n), counter
    for key, (value, has_ttl) in load.written.items():
        assert client.get(key) == value, key
        ttl = client.ttl(key)
        assert (0 < ttl <= 3600) if has_ttl else ttl == -1, (key, ttl)
    for key, value in pre.items():
        if key in load.deleted:
            assert client.exists(key) == 0, f"deleted {key} came back"
        else:
            assert client.get(key) == value, key
            ttl = client.ttl(key)
            assert (0 < ttl <= 3600) if int(key.split(":")[1]) % 4 == 0 else ttl == -1, (key, ttl)
    assert total == len(pre) - len(load.deleted) + len(load.written) + len(load.acked)
    ok(tool("check", a.addr))


def _answers(node):
    try:
        with RawConnection(node.port, timeout=0.5) as conn:
            return conn.call("PING") == "PONG"
    except (OSError, TimeoutError):
        return False


@needs_mover
def test_killed_tool_resumes_and_a_third_run_says_committed(servers):
    keys = 100_000
    a = single_node_with_keys(servers, keys)
    b = join(servers, a)
    args = ("migrate", "--slots", "0-8191", "--to", b.addr, a.addr)
    bg = Background(*args)
    try:
        # Once the source shows progress, pause the destination (every client, the tool's pushes
        # and the source's mover included): the move cannot finish or commit under us.
        wait_until(lambda: task_seen(a), timeout=60, what="the source's task to show progress", interval=0.002)
        assert raw(b, "CLIENT", "PAUSE", "3000", "ALL") == "OK"
        assert bg.proc.poll() is None, "the tool finished before it could be killed:\n" + bg.output
    finally:
        bg.kill()
    # Still open: a owns everything, b imports; both serve (unpause first: RawConnection to b).
    assert slot_owners(a)[0] == a.port
    # CLIENT UNPAUSE would itself wait under PAUSE ALL: let the pause run out.
    wait_until(lambda: _answers(b), timeout=30, what="the destination's pause to end")
    assert "importing" in str(raw(b, "CLUSTER", "NODES")) or "-<-" in raw(b, "CLUSTER", "NODES")

    again = tool(*args)
    assert again.returncode == 0, output(again)
    # Resumed (marks in force), or, if the killed tool's commit push to b ran once b was
    # unpaused, the commit finished.
    assert any(w in again.stdout for w in ("resuming", "in force", "finishing")), again.stdout
    assert "committed" in again.stdout
    third = ok(tool(*args))
    assert "already committed" in third
    assert assert_every_key_on_its_owner([a, b]) == keys
    moved = sum(1 for i in range(keys) if key_slot(f"key:{i}") <= 8191)
    assert len(keys_of(b)) == moved
    ok(tool("check", a.addr))


@needs_mover
def test_destination_down_during_the_move_then_back(servers):
    keys = 50_000
    a = single_node_with_keys(servers, keys)
    b = join(servers, a, config_name="b.json")
    bg = Background("migrate", "--slots", "0-8191", "--to", b.addr, "--timeout", "100", a.addr)
    try:
        wait_until(lambda: task_seen(a), timeout=60, what="progress", interval=0.002)
        # Down with what it has (SHUTDOWN SAVE writes the RDB it reloads; config-file keeps its
        # importing mark).
        try:
            raw(b, "SHUTDOWN", "SAVE")
        except Exception:  # the connection closes under the reply
            pass
        b.proc.wait(timeout=30)
        # The task retries, and the tool shows it and keeps waiting.
        wait_until(lambda: "retrying" in bg.output, timeout=60, what="the tool to show the task retrying")
        assert bg.proc.poll() is None, "the tool gave up while the destination was down:\n" + bg.output
        b.start(attempts=1, port=b.port)
        rc = bg.wait(timeout=120)
    finally:
        bg.kill()
    assert rc == 0, bg.output
    assert "committed" in bg.output
    assert assert_every_key_on_its_owner([a, b]) == keys


@needs_mover
def test_add_node_and_rebalance_give_four_nodes_4096_slots(servers):
    a, b, c = create(servers, 3)
    client = a.cluster_client()
    pipe = client.pipeline()
    for i in range(3000):
        pipe.set(f"k:{i}", i)
    pipe.execute()
    d = join(servers, a)
    out = ok(tool("rebalance", a.addr))
    assert "plan (3 move(s))" in out and "[OK] rebalanced" in out, out
    for n in (a, b, c, d):
        assert slots_owned(n) == 4096
    assert "[OK] balanced" in ok(tool("rebalance", b.addr))
    ok(tool("check", d.addr))
    assert assert_every_key_on_its_owner([a, b, c, d]) == 3000
    fresh = d.cluster_client()
    for i in range(3000):
        assert fresh.get(f"k:{i}") == str(i)
    assert len(keys_of(d)) > 0

"""Replica safety: a replica applies everything its master sends, whatever its own table says.

A master M (topology: every slot) and a replica R (`REPLICAOF` issued by the test), both running
the module. R's own table serves nothing (`UMCTL SETCLUSTER ... <R> 0 PEER <M> 1 0-16383`), or R is
left unconfigured. M receives thousands of SETs, INCR, HSET, EXPIRE, DEL, MULTI/EXEC blocks and
scripts that write; R must end up byte-identical (`DEBUG DIGEST`) once its replication offset has
caught up (routing.md "Never redirected", replication.md "Replicas").

Clients talking to R: reads and writes get `-MOVED` to M; after `READONLY` reads are served by R
and writes still get `-MOVED`; `READWRITE` brings `-MOVED` back for reads. New topologies pushed to
R between write batches never make it drop or refuse anything from its master.
"""

import pytest

from conftest import RawConnection, info_fields, key_slot, raw, wait_until

ZERO_DIGEST = "0" * 40


def repl_offset(server):
    fields = info_fields(server, "replication")
    if fields["role"] == "master":
        return int(fields["master_repl_offset"])
    return int(fields["slave_repl_offset"])


def wait_replica_synced(master, replica):
    """Waits until the replica's link is up and its offset equals the master's."""

    def synced():
        fields = info_fields(replica, "replication")
        return (
            fields.get("master_link_status") == "up"
            and fields.get("master_sync_in_progress") == "0"
            and int(fields["slave_repl_offset"]) == repl_offset(master)
        )

    wait_until(synced, timeout=20, what=f"replica {replica.addr} to catch up with {master.addr}")


def assert_identical(master, replica):
    wait_replica_synced(master, replica)
    m_digest = raw(master, "DEBUG", "DIGEST")
    r_digest = raw(replica, "DEBUG", "DIGEST")
    assert m_digest != ZERO_DIGEST, "the master holds no data: the comparison would prove nothing"
    assert r_digest == m_digest, "the replica's dataset differs from its master's"
    assert raw(replica, "DBSIZE") == raw(master, "DBSIZE")


def setcluster_master(master, epoch=1):
    reply = raw(master, "UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", "db", master.addr, "1", "0-16383")
    assert reply == "OK", reply


def setcluster_replica_serving_nothing(replica, master, epoch=1):
    reply = raw(
        replica, "UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", "db",
        replica.addr, "0", "PEER", master.addr, "1", "0-16383",
    )
    assert reply == "OK", reply


def setrepl(master, replica, epoch=1):
    for node, args in [
        (master, ["master", "db", master.addr, "1", replica.addr, replica.addr]),
        (replica, ["replica", "db", replica.addr, "1", master.addr, master.addr]),
    ]:
        reply = raw(node, "UMCTL", "SETREPL", str(epoch), "NOFLAG", *args)
        assert reply == "OK", reply


def start_pair(servers, replica_config):
    master, replica = servers.start(), servers.start()
    setcluster_master(master)
    if replica_config == "serves-nothing":
        setcluster_replica_serving_nothing(replica, master)
    else:
        assert replica_config == "unconfigured"
    return master, replica


def attach(master, replica):
    assert raw(replica, "REPLICAOF", "127.0.0.1", str(master.port)) == "OK"
    wait_replica_synced(master, replica)


SCRIPT_SET_AND_INCR = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'last', ARGV[1])
return redis.call('INCRBY', KEYS[3], ARGV[2])
"""

SCRIPT_EXPIRE_AND_DEL = """
redis.call('RPUSH', KEYS[1], ARGV[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 3600000)
return redis.call('DEL', KEYS[2])
"""


def write_batch(master, tag, n_sets=3000):
    """Writes to `master` everything a replica must replay; keys cover every slot range."""
    r = master.client()
    pipe = r.pipeline(transaction=False)
    for i in range(n_sets):
        pipe.set(f"{tag}:k:{i}", f"value-{tag}-{i}")
    for i in range(200):
        pipe.incr(f"{tag}:counter:{i % 50}")
        pipe.hset(f"{tag}:h:{i % 40}", f"field{i}", i)
    for i in range(0, n_sets, 7):
        pipe.expire(f"{tag}:k:{i}", 3600 + i)
    for i in range(0, n_sets, 11):
        pipe.delete(f"{tag}:k:{i}")
    pipe.execute()

    # MULTI/EXEC blocks (keys of one transaction share a hash tag, as on any cluster).
    for t in range(30):
        tx = r.pipeline(transaction=True)
        tx.set(f"{{{tag}-tx{t}}}:a", t)
        tx.incrby(f"{{{tag}-tx{t}}}:n", t + 1)
        tx.lpush(f"{{{tag}-tx{t}}}:l", "x", "y")
        tx.expire(f"{{{tag}-tx{t}}}:l", 7200)
        tx.delete(f"{{{tag}-tx{t}}}:a")
        assert tx.execute() == [True, t + 1, 2, True, 1]

    # Scripts that write (EVAL and EVALSHA).
    sha = r.script_load(SCRIPT_SET_AND_INCR)
    for s in range(30):
        keys = [f"{{{tag}-sc{s}}}:s", f"{{{tag}-sc{s}}}:h", f"{{{tag}-sc{s}}}:n"]
        assert r.eval(SCRIPT_SET_AND_INCR, 3, *keys, f"v{s}", s) == s
        assert r.evalsha(sha, 3, *keys, f"w{s}", 1) == s + 1
        assert r.eval(SCRIPT_EXPIRE_AND_DEL, 2, f"{{{tag}-sc{s}}}:l", f"{{{tag}-sc{s}}}:s", "e") == 1

    slots = {key_slot(f"{tag}:k:{i}") for i in range(n_sets)}
    assert min(slots) < 1000 and max(slots) > 15000, "the batch should touch the whole slot space"


@pytest.mark.parametrize("replica_config", ["serves-nothing", "unconfigured"])
def test_replica_applies_writes_for_slots_it_does_not_serve(servers, replica_config):
    master, replica = start_pair(servers, replica_config)
    # Some data before the link (full sync through an RDB), the rest streamed afterwards.
    write_batch(master, "before", n_sets=500)
    attach(master, replica)
    assert_identical(master, replica)

    write_batch(master, "after")
    assert_identical(master, replica)

    # Nothing from the master link was redirected or refused on the replica.
    fields = info_fields(replica, "umcluster")
    for counter in (
        "umcluster_redirect_moved", "umcluster_redirect_ask", "umcluster_error_crossslot",
        "umcluster_error_tryagain", "umcluster_error_clusterdown", "umcluster_script_denied",
        "umcluster_multi_rejected", "umcluster_exec_aborted",
    ):
        assert fields[counter] == "0", f"{counter} = {fields[counter]} on the replica"
    # Its own clients still get the replica's answer: MOVED to the master, or CLUSTERDOWN while
    # it has no topology.
    expected = {
        "serves-nothing": f"MOVED {key_slot('after:k:1')} {master.addr}",
        "unconfigured": "CLUSTERDOWN The cluster is down",
    }[replica_config]
    assert raw(replica, "GET", "after:k:1") == expected


def test_replica_with_cached_redirects_still_applies_every_write_of_its_master(servers):
    """A replica's clients get MOVED for every slot, which caches a redirect per slot (moved.rs);
    the master link's commands for those slots must still be applied, never redirected. Half
    the slots are another node's in the replica's topology (a push its master has not had yet):
    those redirects do not point at its master, so only the client check tells them apart."""
    master, replica = servers.start(), servers.start()
    setcluster_master(master)
    elsewhere = f"127.0.0.1:{replica.port + 1 if replica.port < 65535 else replica.port - 1}"
    reply = raw(
        replica, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "db", replica.addr, "0",
        "PEER", master.addr, "1", "0-8191", elsewhere, "1", "8192-16383",
    )
    assert reply == "OK", reply
    attach(master, replica)

    def owner(key):
        return master.addr if key_slot(key) < 8192 else elsewhere

    keys = [f"after:k:{i}" for i in range(3000)]
    with RawConnection(replica.port) as c:
        for _ in range(2):  # the first ask of each slot caches, the second replays
            for key in keys:
                c.send("GET", key)
            for key in keys:
                assert c.read() == f"MOVED {key_slot(key)} {owner(key)}"
    moved = int(info_fields(replica, "umcluster")["umcluster_redirect_moved"])
    assert moved == 2 * len(keys)

    write_batch(master, "after")
    assert_identical(master, replica)
    assert int(info_fields(replica, "umcluster")["umcluster_redirect_moved"]) == moved
    for key in ("after:k:1", "after:k:2", "after:k:3"):
        assert raw(replica, "GET", key) == f"MOVED {key_slot(key)} {owner(key)}"


def test_replica_redirects_clients_to_its_master(servers):
    master, replica = start_pair(servers, "serves-nothing")
    master.client().set("foo", "bar")
    attach(master, replica)
    moved = f"MOVED {key_slot('foo')} {master.addr}"
    with RawConnection(replica.port) as c:
        assert c.call("GET", "foo") == moved
        assert c.call("SET", "foo", "x") == moved
        assert c.call("HSET", "{foo}h", "f", "v") == moved
    assert master.client().get("foo") == "bar"


def check_readonly_cycle(master, replica):
    slot = key_slot("foo")
    moved = f"MOVED {slot} {master.addr}"
    with RawConnection(replica.port) as c:
        assert c.call("GET", "foo") == moved
        assert c.call("READONLY") == "OK"
        assert c.call("GET", "foo") == "bar", "a READONLY connection reads from the replica"
        assert c.call("EXISTS", "foo") == 1
        assert c.call("SET", "foo", "x") == moved, "writes are still redirected"
        assert c.call("INCR", "counter") == f"MOVED {key_slot('counter')} {master.addr}"
        assert c.call("READWRITE") == "OK"
        assert c.call("GET", "foo") == moved
    # READONLY belongs to the connection that sent it.
    with RawConnection(replica.port) as other:
        assert other.call("GET", "foo") == moved
    assert master.client().get("foo") == "bar"


def test_readonly_connection_reads_from_replica_once_setrepl_names_its_master(servers):
    master, replica = start_pair(servers, "serves-nothing")
    master.client().set("foo", "bar")
    attach(master, replica)
    setrepl(master, replica)
    check_readonly_cycle(master, replica)


def test_readonly_connection_reads_from_replica_configured_by_setcluster_and_replicaof(servers):
    master, replica = start_pair(servers, "serves-nothing")
    master.client().set("foo", "bar")
    attach(master, replica)
    check_readonly_cycle(master, replica)


def test_redis_py_read_from_replicas_spreads_reads_to_the_replica(servers):
    master, replica = start_pair(servers, "serves-nothing")
    attach(master, replica)
    setrepl(master, replica)
    rc = master.cluster_client(read_from_replicas=True)
    assert [n.port for n in rc.get_replicas()] == [replica.port]
    keys = [f"rr:{i}" for i in range(200)]
    for k in keys:
        rc.set(k, k.upper())
    wait_replica_synced(master, replica)
    assert raw(replica, "CONFIG", "RESETSTAT") == "OK"
    for k in keys:
        assert rc.get(k) == k.upper()
    stats = info_fields(replica, "commandstats")
    assert "cmdstat_get" in stats, "no GET reached the replica"
    served = int(stats["cmdstat_get"].split("calls=")[1].split(",")[0])
    assert 0 < served < len(keys) + 1
    assert info_fields(replica, "umcluster")["umcluster_redirect_moved"] == "0"


def test_new_topologies_pushed_to_replica_between_batches_keep_it_identical(servers):
    master, replica = start_pair(servers, "serves-nothing")
    attach(master, replica)
    other = "127.0.0.1:1"  # a peer that does not exist: R must not care
    layouts = [
        ["0", "PEER", master.addr, "2", "0-8191", "8192-16383"],
        ["0", "PEER", master.addr, "1", "0-9999", other, "1", "10000-16383"],
        ["0", "PEER", master.addr, "1", "0-100"],
        ["0", "PEER", master.addr, "1", "0-16383"],
    ]
    for batch, layout in enumerate(layouts):
        epoch = batch + 2
        reply = raw(replica, "UMCTL", "SETCLUSTER", "v2", str(epoch), "NOFLAG", "db", replica.addr, *layout)
        assert reply == "OK", reply
        assert raw(replica, "UMCTL", "GETEPOCH") == epoch
        if batch == 1:
            setrepl(master, replica, epoch=batch)
        write_batch(master, f"batch{batch}", n_sets=1000)
        assert_identical(master, replica)
    assert info_fields(replica, "umcluster")["umcluster_setcluster_accepted"] == str(1 + len(layouts))

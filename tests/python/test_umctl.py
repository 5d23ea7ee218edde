"""The control protocol, `UMCTL`, on a real server (umctl.md).

Covers: both spellings (`UMCTL SETCLUSTER` and `UMCTL.SETCLUSTER`); `GETEPOCH`; `-OLD_EPOCH` for a
stale or equal epoch, leaving the table untouched; `FORCE`; `-ERR_NOT_MY_META` for a config meant for
another port; a batch of malformed SETCLUSTER / SETREPL commands, each refused with an error that
changes neither the table nor the epochs and leaves the server alive; `+WARNING: ignored invalid
config` for an unknown CONFIG field; COMPRESS payloads built here (base64 of gzip of JSON); SETREPL
reflected in CLUSTER NODES / SLOTS / SHARDS / REPLICAS and `UMCTL INFOREPL`; the `INFO umcluster`
section and its redirect counters.

"Unchanged" is checked from the outside: epochs, `CLUSTER NODES`, `CLUSTER SLOTS`, `UMCTL INFOREPL`
and the answer to a routed key on each side of the table.
"""

import base64
import gzip
import json

import pytest

from conftest import (
    HOST,
    Err,
    RawConnection,
    ServerPool,
    info_fields,
    key_in_slot_range,
    key_slot,
    raw,
    wait_until,
)

# The table of the shared node: it owns 0-8191, a peer owns 8192-16383.
LOCAL_KEY = key_in_slot_range("local:", 0, 8191)
REMOTE_KEY = key_in_slot_range("remote:", 8192, 16383)
CONFIG_EPOCH = 5
REPL_EPOCH = 3


def other_addr(server, delta=1):
    """An address on another port than the server's (a peer that need not exist)."""
    port = server.port + delta if server.port + delta <= 65535 else server.port - delta
    return f"{HOST}:{port}"


def snapshot(server):
    """Everything a refused command must leave as it was."""
    with RawConnection(server.port) as c:
        return {
            "epoch": c.call("UMCTL", "GETEPOCH"),
            "nodes": c.call("CLUSTER", "NODES"),
            "slots": c.call("CLUSTER", "SLOTS"),
            "inforepl": c.call("UMCTL", "INFOREPL"),
            "repl_epoch": info_fields(server, "umcluster")["umcluster_repl_epoch"],
            "local_key": c.call("GET", LOCAL_KEY),
            "remote_key": c.call("GET", REMOTE_KEY),
        }


def push(server, *args):
    return raw(server, "UMCTL", "SETCLUSTER", *[str(a) for a in args])


def configure(server, peer, epoch=CONFIG_EPOCH):
    assert push(server, "v2", epoch, "NOFLAG", "db", server.addr, 1, "0-8191", "PEER", peer, 1, "8192-16383") == "OK"


@pytest.fixture(scope="module")
def configured():
    """One node with a two-node table (it owns 0-8191) and a SETREPL, for tests that must not
    change anything."""
    pool = ServerPool()
    try:
        node = pool.start()
        peer = other_addr(node)
        configure(node, peer)
        replica = other_addr(node, 2)
        assert raw(node, "UMCTL", "SETREPL", REPL_EPOCH, "NOFLAG", "master", "db", node.addr, 1, replica, replica) == "OK"
        assert raw(node, "SET", LOCAL_KEY, "here") == "OK"
        node.peer = peer
        yield node
    finally:
        pool.stop_all()


# ---------------------------------------------------------------------------------------------
# Spellings and epochs
# ---------------------------------------------------------------------------------------------


def test_both_spellings_and_any_case_set_the_cluster(servers):
    node = servers.start()
    peer = other_addr(node)
    assert raw(node, "UMCTL", "GETEPOCH") == 0
    assert raw(node, "UMCTL.GETEPOCH") == 0

    assert raw(node, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "db", node.addr, "1", "0-16383") == "OK"
    assert raw(node, "UMCTL.GETEPOCH") == 1
    assert raw(node, "GET", REMOTE_KEY) is None

    assert raw(node, "UMCTL.SETCLUSTER", "v2", "2", "NOFLAG", "db", node.addr, "1", "0-8191", "PEER", peer, "1", "8192-16383") == "OK"
    assert raw(node, "UMCTL", "GETEPOCH") == 2
    assert raw(node, "GET", REMOTE_KEY) == f"MOVED {key_slot(REMOTE_KEY)} {peer}"

    assert raw(node, "umctl", "setcluster", "V2", "3", "noflag", "db", node.addr, "1", "0-16383") == "OK"
    assert raw(node, "umctl.setcluster", "v2", "4", "NOFLAGS", "db", node.addr, "1", "0-8191", "peer", peer, "1", "8192-16383") == "OK"
    assert raw(node, "umctl", "getepoch") == 4
    assert raw(node, "GET", REMOTE_KEY) == f"MOVED {key_slot(REMOTE_KEY)} {peer}"
    assert raw(node, "UMCTL", "LISTCLUSTER") == ["db"]
    assert raw(node, "UMCTL.LISTCLUSTER") == ["db"]
    assert raw(node, "UMCTL", "INFOMGR") == []
    assert raw(node, "UMCTL", "READY") == 1
    assert raw(node, "UMCTL", "NOSUCHTHING").startswith("ERR unknown subcommand")
    help_lines = raw(node, "UMCTL", "HELP")
    assert any(line.startswith("UMCTL SETCLUSTER") for line in help_lines)
    assert raw(node, "UMCTL.HELP") == help_lines
    assert raw(node, "UMCTL.NOSUCHTHING").startswith("ERR unknown subcommand")
    assert raw(node, "UMCTL").startswith("ERR wrong number of arguments")
    # The dotted spelling works inside a transaction too (it is rewritten when queued).
    with RawConnection(node.port) as c:
        assert c.call("MULTI") == "OK"
        assert c.call("UMCTL.GETEPOCH") == "QUEUED"
        assert c.call("UMCTL", "GETEPOCH") == "QUEUED"
        assert c.call("EXEC") == [4, 4]


def test_acl_grants_umctl_subcommands_one_by_one_in_both_spellings(servers):
    node = servers.start()
    admin = node.client()
    admin.execute_command("ACL", "SETUSER", "watcher", "on", ">pw", "+umctl|getepoch",
                          "+umctl|listcluster")
    with RawConnection(node.port) as c:
        assert c.call("AUTH", "watcher", "pw") == "OK"
        assert c.call("UMCTL", "GETEPOCH") == 0
        assert c.call("UMCTL.GETEPOCH") == 0
        assert c.call("umctl.listcluster") == []
        for spelling in (["UMCTL", "SETCLUSTER"], ["UMCTL.SETCLUSTER"]):
            reply = c.call(*spelling, "v2", "1", "NOFLAG", "db", node.addr, "1", "0-16383")
            assert isinstance(reply, Err) and reply.startswith("NOPERM"), reply
    assert raw(node, "UMCTL", "GETEPOCH") == 0


def test_the_module_keeps_the_servers_command_table_small(servers):
    """Every command a module registers enlarges the server's command table; on 7.0 (240
    commands in 256 buckets) past 16 the table doubles and rehashes, and every command's lookup
    then costs about 65 instructions more in about 4 server starts of 10 (README, "Benchmarks").
    The dotted UMCTL spelling is therefore a rewrite, not 8 more commands."""
    node = servers.start()
    mine = [n for n in raw(node, "COMMAND", "LIST", "FILTERBY", "MODULE", "umcluster") if "|" not in n]
    # 12 in a release build; debug builds add the fault-injection command.
    assert len(mine) <= 13, sorted(mine)
    assert "umctl" in mine and not any(name.startswith("umctl.") for name in mine)
    subcommands = raw(node, "COMMAND", "INFO", "umctl")[0][9]
    assert sorted(sub[0] for sub in subcommands) == sorted(
        f"umctl|{s}" for s in ("setcluster", "setrepl", "getepoch", "ready", "infomgr",
                               "inforepl", "listcluster", "migrations", "help"))


def test_epoch_zero_is_not_newer_than_an_unconfigured_node(servers):
    node = servers.start()
    assert push(node, "v2", 0, "NOFLAG", "db", node.addr, 1, "0-16383") == "OLD_EPOCH"
    assert raw(node, "GET", "foo") == "CLUSTERDOWN The cluster is down"
    assert push(node, "v2", 0, "FORCE", "db", node.addr, 1, "0-16383") == "OK"
    assert raw(node, "GET", "foo") is None


@pytest.mark.parametrize("epoch", [CONFIG_EPOCH, CONFIG_EPOCH - 1, 0])
def test_stale_or_equal_epoch_gets_old_epoch_and_changes_nothing(configured, epoch):
    before = snapshot(configured)
    # A table that would differ in every way: all slots local.
    assert push(configured, "v2", epoch, "NOFLAG", "db", configured.addr, 1, "0-16383") == "OLD_EPOCH"
    assert push(configured, "v2", epoch, "NOFLAG", "other", configured.addr, 0, "PEER", configured.peer, 1, "0-16383") == "OLD_EPOCH"
    assert snapshot(configured) == before
    assert before["remote_key"].startswith("MOVED ")
    assert before["local_key"] == "here"


def test_stale_setrepl_gets_old_epoch_and_changes_nothing(configured):
    before = snapshot(configured)
    for epoch in (REPL_EPOCH, REPL_EPOCH - 1):
        assert raw(configured, "UMCTL", "SETREPL", epoch, "NOFLAG") == "OLD_EPOCH"
    assert snapshot(configured) == before
    assert before["inforepl"] != []


def test_force_applies_an_older_epoch(servers):
    node = servers.start()
    peer = other_addr(node)
    configure(node, peer, epoch=10)
    assert raw(node, "GET", REMOTE_KEY).startswith("MOVED ")
    assert push(node, "v2", 3, "FORCE", "db", node.addr, 1, "0-16383") == "OK"
    assert raw(node, "UMCTL", "GETEPOCH") == 3
    assert raw(node, "GET", REMOTE_KEY) is None
    # And the forced epoch is now the one to beat.
    assert push(node, "v2", 3, "NOFLAG", "db", node.addr, 1, "0-8191") == "OLD_EPOCH"
    assert push(node, "v2", 4, "NOFLAG", "db", node.addr, 1, "0-8191", "PEER", peer, 1, "8192-16383") == "OK"
    assert raw(node, "GET", REMOTE_KEY) == f"MOVED {key_slot(REMOTE_KEY)} {peer}"


def test_config_naming_another_port_is_not_my_meta(configured):
    before = snapshot(configured)
    for local in (configured.peer, other_addr(configured, 7)):
        assert push(configured, "v2", 99, "NOFLAG", "db", local, 1, "0-16383") == "ERR_NOT_MY_META"
        assert push(configured, "v2", 99, "FORCE", "db", local, 1, "0-16383") == "ERR_NOT_MY_META"
    assert snapshot(configured) == before


# ---------------------------------------------------------------------------------------------
# Malformed commands
# ---------------------------------------------------------------------------------------------


def gz_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data)).decode()


def compress_payload(name, local, peer, config=True):
    """The JSON undermoon's coordinator sends with COMPRESS, as base64(gzip(json)).
    `local`/`peer` map an address to a list of (start, end) ranges (stable)."""
    doc = {
        "cluster_name": name,
        "local": {a: [{"range_list": [list(r) for r in ranges], "tag": "None"}] for a, ranges in local.items()},
        "peer": {a: [{"range_list": [list(r) for r in ranges], "tag": "None"}] for a, ranges in peer.items()},
        "cluster_config": {},
    }
    if config:
        doc["cluster_config"] = {
            "compression_strategy": "disabled",
            "migration_config": {"max_migration_time": 3600, "max_blocking_time": 10000, "scan_interval": 500, "scan_count": 16},
        }
    return gz_b64(json.dumps(doc).encode())


# {me}: the node's own address, {peer}: another address. Epoch 9 is newer than the node's, so only
# the malformation can explain a refusal.
MALFORMED_SETCLUSTER = {
    "no-arguments": [],
    "only-version-and-epoch": ["v2", "9"],
    "no-cluster-name": ["v2", "9", "NOFLAG"],
    "unsupported-version": ["v3", "9", "NOFLAG", "db", "{me}", "1", "0-16383"],
    "epoch-negative": ["v2", "-1", "NOFLAG", "db", "{me}", "1", "0-16383"],
    "epoch-not-a-number": ["v2", "nine", "NOFLAG", "db", "{me}", "1", "0-16383"],
    "epoch-overflows-u64": ["v2", "18446744073709551616", "NOFLAG", "db", "{me}", "1", "0-16383"],
    "epoch-empty": ["v2", "", "NOFLAG", "db", "{me}", "1", "0-16383"],
    "cluster-name-bad-char": ["v2", "9", "NOFLAG", "bad.name", "{me}", "1", "0-16383"],
    "cluster-name-too-long": ["v2", "9", "NOFLAG", "x" * 31, "{me}", "1", "0-16383"],
    "count-larger-than-ranges": ["v2", "9", "NOFLAG", "db", "{me}", "2", "0-100"],
    "count-swallows-peer-keyword": ["v2", "9", "NOFLAG", "db", "{me}", "2", "0-100", "PEER", "{peer}", "1", "101-200"],
    "count-smaller-than-ranges": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "200-300"],
    "count-not-a-number": ["v2", "9", "NOFLAG", "db", "{me}", "one", "0-100"],
    "count-absurd": ["v2", "9", "NOFLAG", "db", "{me}", "99999", "0-100"],
    "missing-slot-range": ["v2", "9", "NOFLAG", "db", "{me}"],
    "overlap-local-and-peer": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", "{peer}", "1", "100-200"],
    "overlap-inside-local": ["v2", "9", "NOFLAG", "db", "{me}", "2", "0-100", "50-60"],
    "overlap-between-peers": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-10", "PEER", "{peer}", "1", "11-200", "{peer2}", "1", "200-300"],
    "reversed-range": ["v2", "9", "NOFLAG", "db", "{me}", "1", "100-50"],
    "slot-out-of-range": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-16384"],
    "slot-far-out-of-range": ["v2", "9", "NOFLAG", "db", "{me}", "1", "16000-99999999999"],
    "range-without-dash": ["v2", "9", "NOFLAG", "db", "{me}", "1", "100"],
    "range-negative": ["v2", "9", "NOFLAG", "db", "{me}", "1", "-1-5"],
    "range-garbage": ["v2", "9", "NOFLAG", "db", "{me}", "1", "a-b"],
    "address-without-port": ["v2", "9", "NOFLAG", "db", HOST, "1", "0-16383"],
    "address-port-zero": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", f"{HOST}:0", "1", "101-200"],
    "address-port-too-big": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", f"{HOST}:70000", "1", "101-200"],
    "address-bad-host": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", "bad/host:7000", "1", "101-200"],
    "address-unbracketed-ipv6": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", "::1:7000", "1", "101-200"],
    "unknown-keyword-peers": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEERS", "{peer}", "1", "101-200"],
    "unknown-group-kind": ["v2", "9", "NOFLAG", "db", "{me}", "moving", "1", "0-100"],
    "duplicate-peer-section": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", "{peer}", "1", "101-200", "PEER", "{peer2}", "1", "201-300"],
    "trailing-token": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-16383", "garbage"],
    "trailing-address": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "PEER", "{peer}", "1", "101-200", "{peer2}"],
    "two-local-addresses": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "{peer}", "1", "200-300"],
    "incomplete-migration": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "{me}", "migrating", "1", "101-200", "9", "{me}", "{me}"],
    "migration-bad-epoch": ["v2", "9", "NOFLAG", "db", "{me}", "migrating", "1", "101-200", "x", "{me}", "{me}", "{peer}", "{peer}"],
    "importing-own-slot": ["v2", "9", "NOFLAG", "db", "{me}", "1", "0-100", "{me}", "importing", "1", "0-100", "9", "{peer}", "{peer}", "{me}", "{me}"],
    "compress-not-base64": ["v2", "9", "COMPRESS", "!!!not-base64!!!"],
    "compress-base64-not-gzip": ["v2", "9", "COMPRESS", base64.b64encode(b"hello world").decode()],
    "compress-gzip-not-json": ["v2", "9", "COMPRESS", gz_b64(b"this is not json")],
    "compress-json-wrong-schema": ["v2", "9", "COMPRESS", gz_b64(b'{"cluster_name": "db", "slots": []}')],
    "compress-json-bad-range": ["v2", "9", "COMPRESS", "@compress-bad-range"],
    "compress-json-bad-name": ["v2", "9", "COMPRESS", "@compress-bad-name"],
    "compress-json-bad-address": ["v2", "9", "COMPRESS", "@compress-bad-address"],
    "compress-json-overlap": ["v2", "9", "COMPRESS", "@compress-overlap"],
    "compress-extra-argument": ["v2", "9", "COMPRESS", "@compress-valid", "extra"],
    "compress-empty": ["v2", "9", "COMPRESS", ""],
}


def expand(args, node):
    me, peer, peer2 = node.addr, node.peer, other_addr(node, 3)
    payloads = {
        "@compress-valid": lambda: compress_payload("db", {me: [(0, 16383)]}, {}),
        "@compress-bad-range": lambda: compress_payload("db", {me: [(100, 50)]}, {}),
        "@compress-bad-name": lambda: compress_payload("no spaces", {me: [(0, 16383)]}, {}),
        "@compress-bad-address": lambda: compress_payload("db", {me: [(0, 100)]}, {"nowhere": [(101, 200)]}),
        "@compress-overlap": lambda: compress_payload("db", {me: [(0, 100)]}, {peer: [(100, 200)]}),
    }
    out = []
    for a in args:
        a = a.replace("{me}", me).replace("{peer2}", peer2).replace("{peer}", peer)
        out.append(payloads[a]() if a in payloads else a)
    return out


@pytest.mark.parametrize("case", list(MALFORMED_SETCLUSTER))
def test_malformed_setcluster_is_refused_and_changes_nothing(configured, case):
    before = snapshot(configured)
    rejected_before = int(info_fields(configured, "umcluster")["umcluster_setcluster_rejected"])
    args = expand(MALFORMED_SETCLUSTER[case], configured)
    for spelling in (["UMCTL", "SETCLUSTER"], ["UMCTL.SETCLUSTER"]):
        reply = raw(configured, *spelling, *args)
        assert isinstance(reply, Err), f"{case}: accepted ({reply!r})"
        assert reply and "\n" not in reply
        assert raw(configured, "PING") == "PONG"
        assert snapshot(configured) == before, f"{case}: a refused push changed the node"
    if args:  # without arguments the server's own arity check answers
        rejected = int(info_fields(configured, "umcluster")["umcluster_setcluster_rejected"])
        assert rejected == rejected_before + 2


def test_malformed_setcluster_errors_say_what_is_wrong(configured):
    def err(case):
        return raw(configured, "UMCTL", "SETCLUSTER", *expand(MALFORMED_SETCLUSTER[case], configured))

    assert "100-50" in err("reversed-range")
    assert "0-16384" in err("slot-out-of-range")
    assert "slot 100" in err("overlap-local-and-peer")
    assert "v3" in err("unsupported-version")
    assert "nine" in err("epoch-not-a-number")
    assert "bad.name" in err("cluster-name-bad-char")
    assert "bad/host:7000" in err("address-bad-host")
    assert "COMPRESS" in err("compress-not-base64")
    assert "COMPRESS" in err("compress-gzip-not-json")


MALFORMED_SETREPL = {
    "no-arguments": [],
    "epoch-only": ["9"],
    "epoch-not-a-number": ["x", "NOFLAG"],
    "epoch-negative": ["-3", "NOFLAG"],
    "unknown-role": ["9", "NOFLAG", "boss", "db", "{me}", "0"],
    "missing-peer-count": ["9", "NOFLAG", "master", "db", "{me}"],
    "peer-count-not-a-number": ["9", "NOFLAG", "master", "db", "{me}", "many"],
    "peer-count-absurd": ["9", "NOFLAG", "master", "db", "{me}", "99999999"],
    "missing-peer-proxy": ["9", "NOFLAG", "master", "db", "{me}", "1", "{peer}"],
    "count-larger-than-peers": ["9", "NOFLAG", "master", "db", "{me}", "2", "{peer}", "{peer}"],
    "bad-node-address": ["9", "NOFLAG", "master", "db", "nowhere", "0"],
    "bad-peer-address": ["9", "NOFLAG", "replica", "db", "{me}", "1", f"{HOST}:0", "{peer}"],
    "bad-cluster-name": ["9", "NOFLAG", "master", "bad.name", "{me}", "0"],
    "trailing-token": ["9", "NOFLAG", "master", "db", "{me}", "0", "trailing"],
    "entry-for-my-port-on-another-host": ["9", "NOFLAG", "replica", "db", "10.1.2.3:{port}", "1", "{peer}", "{peer}"],
}


@pytest.mark.parametrize("case", list(MALFORMED_SETREPL))
def test_malformed_setrepl_is_refused_and_changes_nothing(configured, case):
    before = snapshot(configured)
    args = [a.replace("{port}", str(configured.port)) for a in expand(MALFORMED_SETREPL[case], configured)]
    for spelling in (["UMCTL", "SETREPL"], ["UMCTL.SETREPL"]):
        reply = raw(configured, *spelling, *args)
        assert isinstance(reply, Err), f"{case}: accepted ({reply!r})"
        assert raw(configured, "PING") == "PONG"
        assert snapshot(configured) == before, f"{case}: a refused SETREPL changed the node"


# ---------------------------------------------------------------------------------------------
# CONFIG, COMPRESS
# ---------------------------------------------------------------------------------------------


def test_the_five_coordinator_config_fields_are_accepted(servers):
    node = servers.start()
    reply = push(
        node, "v2", 1, "NOFLAG", "db", node.addr, 1, "0-16383", "CONFIG",
        "compression_strategy", "disabled", "migration_max_migration_time", 3600,
        "migration_max_blocking_time", 10000, "migration_scan_interval", 500, "migration_scan_count", 16,
    )
    assert reply == "OK"


@pytest.mark.parametrize(
    "config",
    [["bogus_field", "1"], ["migration_scan_count", "-1"], ["compression_strategy", "zstd"], ["migration_scan_count"]],
    ids=["unknown-field", "negative-count", "unknown-strategy", "field-without-value"],
)
def test_invalid_config_applies_the_rest_with_a_warning(servers, config):
    node = servers.start()
    peer = other_addr(node)
    reply = push(
        node, "v2", 7, "NOFLAG", "db", node.addr, 1, "0-8191", "PEER", peer, 1, "8192-16383",
        "CONFIG", "migration_scan_interval", 100, *config,
    )
    assert reply == "WARNING: ignored invalid config"
    assert not isinstance(reply, Err), "a warning is a status reply, not an error"
    assert raw(node, "UMCTL", "GETEPOCH") == 7
    assert raw(node, "GET", REMOTE_KEY) == f"MOVED {key_slot(REMOTE_KEY)} {peer}"
    assert raw(node, "GET", LOCAL_KEY) is None


def test_compressed_setcluster_is_applied(servers):
    node = servers.start()
    peer = other_addr(node)
    payload = compress_payload("zipped", {node.addr: [(0, 8191)]}, {peer: [(8192, 16383)]})
    assert push(node, "v2", 4, "COMPRESS", payload) == "OK"
    assert raw(node, "UMCTL", "GETEPOCH") == 4
    assert raw(node, "UMCTL", "LISTCLUSTER") == ["zipped"]
    assert raw(node, "GET", REMOTE_KEY) == f"MOVED {key_slot(REMOTE_KEY)} {peer}"
    assert raw(node, "SET", LOCAL_KEY, "v") == "OK"
    slots = raw(node, "CLUSTER", "SLOTS")
    assert [(s[0], s[1], s[2][1]) for s in slots] == [(0, 8191, node.port), (8192, 16383, int(peer.split(":")[1]))]

    # Same epoch: refused even when compressed; FORCE,COMPRESS overrides.
    everything = compress_payload("zipped", {node.addr: [(0, 16383)]}, {}, config=False)
    assert push(node, "v2", 4, "COMPRESS", everything) == "OLD_EPOCH"
    assert push(node, "v2", 2, "FORCE,COMPRESS", everything) == "OK"
    assert raw(node, "UMCTL", "GETEPOCH") == 2
    assert raw(node, "GET", REMOTE_KEY) is None

    # A compressed config for another port is not for this node.
    other = compress_payload("zipped", {peer: [(0, 16383)]}, {})
    assert push(node, "v2", 50, "COMPRESS", other) == "ERR_NOT_MY_META"
    assert raw(node, "UMCTL", "GETEPOCH") == 2


# ---------------------------------------------------------------------------------------------
# SETREPL
# ---------------------------------------------------------------------------------------------


def node_lines(server):
    return [line.split(" ") for line in raw(server, "CLUSTER", "NODES").splitlines()]


def test_setrepl_lists_replicas_in_cluster_nodes_slots_shards_and_inforepl(servers):
    master = servers.start()
    peer = other_addr(master)  # the other master, serving 8192-16383
    replica_a, replica_b = other_addr(master, 2), other_addr(master, 3)
    configure(master, peer)
    assert raw(
        master, "UMCTL.SETREPL", 1, "NOFLAG",
        "master", "db", master.addr, 1, replica_a, replica_a,
        "master", "db", peer, 1, replica_b, replica_b,
    ) == "OK"

    lines = {f[1].split("@")[0]: f for f in node_lines(master)}
    assert set(lines) == {master.addr, peer, replica_a, replica_b}
    my_id, peer_id = lines[master.addr][0], lines[peer][0]
    assert raw(master, "CLUSTER", "MYID") == my_id
    assert lines[master.addr][2] == "myself,master" and lines[master.addr][3] == "-"
    assert lines[replica_a][2] == "slave" and lines[replica_a][3] == my_id
    assert lines[replica_b][2] == "slave" and lines[replica_b][3] == peer_id
    assert lines[replica_a][8:] == [] and lines[replica_b][8:] == [], "replicas own no slots"
    assert lines[master.addr][8:] == ["0-8191"]

    slots = raw(master, "CLUSTER", "SLOTS")
    assert [(s[0], s[1]) for s in slots] == [(0, 8191), (8192, 16383)]
    assert [(n[0], n[1]) for n in slots[0][2:]] == [(HOST, master.port), (HOST, int(replica_a.split(":")[1]))]
    assert [(n[0], n[1]) for n in slots[1][2:]] == [(HOST, int(peer.split(":")[1])), (HOST, int(replica_b.split(":")[1]))]
    assert slots[0][3][2] == lines[replica_a][0]

    shards = raw(master, "CLUSTER", "SHARDS")
    roles = []
    for shard in shards:
        nodes = dict(zip(shard[::2], shard[1::2]))["nodes"]
        roles.append([dict(zip(n[::2], n[1::2]))["role"] for n in nodes])
    assert roles == [["master", "replica"], ["master", "replica"]]

    replicas = raw(master, "CLUSTER", "REPLICAS", my_id)
    assert len(replicas) == 1 and replicas[0].startswith(lines[replica_a][0])

    assert raw(master, "UMCTL", "INFOREPL") == [
        ["cluster:db\n", "role:master\n", f"node_address:{master.addr}\n", f"replica:{replica_a}@{replica_a}\n"],
        ["cluster:db\n", "role:master\n", f"node_address:{peer}\n", f"replica:{replica_b}@{replica_b}\n"],
    ]
    assert info_fields(master, "umcluster")["umcluster_repl_epoch"] == "1"


def test_setrepl_on_a_replica_shows_it_as_myself_slave(servers):
    replica = servers.start()
    master = other_addr(replica)
    assert push(replica, "v2", 1, "NOFLAG", "db", replica.addr, 0, "PEER", master, 1, "0-16383") == "OK"
    assert raw(replica, "UMCTL", "READY") == 0
    assert raw(replica, "UMCTL", "SETREPL", 1, "NOFLAG", "replica", "db", replica.addr, 1, master, master) == "OK"
    assert raw(replica, "UMCTL", "READY") == 1
    lines = {f[1].split("@")[0]: f for f in node_lines(replica)}
    assert lines[replica.addr][2] == "myself,slave"
    assert lines[replica.addr][3] == lines[master][0]
    assert raw(replica, "UMCTL", "INFOREPL") == [
        ["cluster:db\n", "role:replica\n", f"node_address:{replica.addr}\n", f"master:{master}@{master}\n"]
    ]


def test_setrepl_replica_role_makes_the_node_replicate_its_master(servers):
    master, replica = servers.start(), servers.start()
    assert push(master, "v2", 1, "NOFLAG", "db", master.addr, 1, "0-16383") == "OK"
    assert push(replica, "v2", 1, "NOFLAG", "db", replica.addr, 0, "PEER", master.addr, 1, "0-16383") == "OK"
    assert raw(replica, "UMCTL", "SETREPL", 1, "NOFLAG", "replica", "db", replica.addr, 1, master.addr, master.addr) == "OK"
    wait_until(
        lambda: info_fields(replica, "replication").get("master_port") == str(master.port),
        timeout=3,
        what="the replica to follow its master after SETREPL",
    )


# ---------------------------------------------------------------------------------------------
# INFO umcluster
# ---------------------------------------------------------------------------------------------


def test_info_section_shows_epoch_and_counts_redirects(servers):
    node = servers.start()
    fields = info_fields(node, "umcluster")
    assert fields["umcluster_configured"] == "0" and fields["umcluster_epoch"] == "0"

    assert raw(node, "GET", "foo") == "CLUSTERDOWN The cluster is down"
    assert info_fields(node, "umcluster")["umcluster_error_clusterdown"] == "1"

    peer = other_addr(node)
    configure(node, peer, epoch=12)
    fields = info_fields(node, "umcluster")
    assert fields["umcluster_configured"] == "1"
    assert fields["umcluster_epoch"] == "12"
    assert fields["umcluster_cluster_name"] == "db"
    assert fields["umcluster_myself"] == node.addr
    assert fields["umcluster_slots_owned"] == "8192"
    assert fields["umcluster_slots_assigned"] == "16384"
    assert fields["umcluster_known_nodes"] == "2"
    moved = int(fields["umcluster_redirect_moved"])
    crossslot = int(fields["umcluster_error_crossslot"])

    assert raw(node, "GET", REMOTE_KEY).startswith("MOVED ")
    assert int(info_fields(node, "umcluster")["umcluster_redirect_moved"]) == moved + 1
    with RawConnection(node.port) as c:
        for _ in range(3):
            assert c.call("SET", REMOTE_KEY, "x").startswith("MOVED ")
        assert c.call("SET", LOCAL_KEY, "x") == "OK"
    assert int(info_fields(node, "umcluster")["umcluster_redirect_moved"]) == moved + 4

    assert raw(node, "MGET", LOCAL_KEY, REMOTE_KEY).startswith("CROSSSLOT ")
    fields = info_fields(node, "umcluster")
    assert int(fields["umcluster_error_crossslot"]) == crossslot + 1
    assert int(fields["umcluster_redirect_moved"]) == moved + 4

    # The section is also part of INFO everything / INFO modules.
    assert "umcluster_epoch:12" in raw(node, "INFO", "everything")
    assert "umcluster_epoch:12" in raw(node, "INFO", "modules")


def test_restricted_acl_user_granted_the_module_commands_gets_native_redirects(servers):
    """README "ACL users": a user with the module's commands granted sees MOVED and can use
    ASKING/READONLY/CLUSTER; the same user without them is refused, never served locally."""
    node = servers.start()
    assert push(node, "v2", 1, "NOFLAG", "db", node.addr, 1, "0-8191", "PEER", other_addr(node), 1, "8192-16383") == "OK"
    admin = node.client()
    admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@read", "+@write", "+@connection",
        "+umcluster.redirect", "+u.r", "+umcluster.asking", "+umcluster.readonly",
        "+umcluster.readwrite", "+umcluster.cluster",
    )
    admin.execute_command("ACL", "SETUSER", "bare", "on", ">pw", "~*", "+@read", "+@write")
    admin.set(LOCAL_KEY, "v")
    with RawConnection(node.port) as c:
        assert c.call("AUTH", "app", "pw") == "OK"
        assert c.call("GET", LOCAL_KEY) == "v"
        # The first MOVED of a slot is made by umcluster.redirect, the next ones by u.r.
        for _ in range(2):
            assert c.call("GET", REMOTE_KEY) == Err(f"MOVED {key_slot(REMOTE_KEY)} {other_addr(node)}")
        assert c.call("ASKING") == "OK"
        assert c.call("READONLY") == "OK"
        assert isinstance(c.call("CLUSTER", "SLOTS"), list)
    with RawConnection(node.port) as c:
        assert c.call("AUTH", "bare", "pw") == "OK"
        # Redis 7.0 cannot put module commands in ACL categories: NOPERM; 7.2+: the native MOVED.
        for _ in range(2):
            reply = c.call("GET", REMOTE_KEY)
            assert isinstance(reply, Err) and (reply.startswith("NOPERM") or reply.startswith("MOVED")), reply

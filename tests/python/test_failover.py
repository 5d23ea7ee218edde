"""Replicas and failover with the admin tool and with Redis Sentinel (replication.md "Failover").

- `umcluster create --replicas 1` on six nodes: three masters, each with one replica whose link is
  up, and every node's CLUSTER NODES lists the replicas.
- Manual failover: keys written to a master and acknowledged by `WAIT 1`, the master is killed,
  `umcluster failover --to <its replica>`; every acknowledged key is readable through a cluster
  client, writes to that shard's slots resume, `umcluster check` is clean. With the old master
  alive it becomes a replica of the new one; running the failover again is harmless.
- A failed master that comes back with its old saved table (`config-file`) is fenced by epoch
  and brought back as a replica of the new master with `umcluster add-replica`.
- Automatic failover: three redis-sentinel processes configured by `umcluster sentinel-config`
  (the hook is the tool itself); a master is killed and, within 30 s, cluster clients write to its
  slots again and `umcluster check` is clean.
"""

import os
import shutil
import subprocess

import pytest
import redis
from redis.cluster import RedisCluster

import conftest

from conftest import (
    HOST,
    THREE_NODE_RANGES,
    free_port,
    info_fields,
    key_in_slot_range,
    raw,
    umcluster,
    wait_until,
)


def output(proc):
    return proc.stdout + proc.stderr


def create_with_replicas(servers, config_file=False):
    if config_file:
        nodes = [
            servers.start(extra_args=["config-file", os.path.join(servers.workdir, f"n{i}.json")])
            for i in range(6)
        ]
    else:
        nodes = servers.start_many(6)
    out = umcluster("create", "--replicas", "1", *[n.addr for n in nodes], timeout=90)
    assert out.returncode == 0, output(out)
    masters, replicas = nodes[:3], nodes[3:]
    for m, r, (lo, hi) in zip(masters, replicas, THREE_NODE_RANGES):
        assert f"{m.addr} -> slots {lo}-{hi}, replicas: {r.addr}" in out.stdout, out.stdout
        fields = info_fields(r, "replication")
        assert fields["master_port"] == str(m.port) and fields["master_link_status"] == "up"
    return masters, replicas


def node_lines(server):
    return [line.split(" ") for line in raw(server, "CLUSTER", "NODES").splitlines()]


def assert_check_clean(seed):
    check = umcluster("check", seed.addr)
    assert check.returncode == 0 and "[ERR]" not in output(check), output(check)


def cluster_client(seed):
    return RedisCluster(host=HOST, port=seed.port, decode_responses=True, socket_timeout=5)


def test_create_with_replicas_lists_them_everywhere(servers):
    masters, replicas = create_with_replicas(servers)
    for n in masters + replicas:
        lines = node_lines(n)
        assert len(lines) == 6
        ids = {f[1].split("@")[0]: f[0] for f in lines}
        for m, r in zip(masters, replicas):
            line = next(f for f in lines if f[1].startswith(r.addr + "@"))
            assert "slave" in line[2] and line[3] == ids[m.addr], line
    assert_check_clean(replicas[0])
    # check compares the servers' real replication with the topology.
    assert raw(replicas[1], "REPLICAOF", "NO", "ONE") == "OK"
    bad = umcluster("check", masters[0].addr)
    assert bad.returncode != 0
    assert f"{replicas[1].addr} is a master, the topology says it replicates from {masters[1].addr}" in output(bad)
    assert raw(replicas[1], "REPLICAOF", HOST, str(masters[2].port)) == "OK"
    bad = umcluster("check", masters[0].addr)
    assert f"{replicas[1].addr} replicates from {masters[2].addr}" in output(bad), output(bad)


def test_manual_failover_keeps_acknowledged_writes(servers):
    masters, replicas = create_with_replicas(servers)
    victim, heir = masters[0], replicas[0]
    lo, hi = THREE_NODE_RANGES[0]
    acked = {}
    direct = victim.client()
    for i in range(200):
        key = key_in_slot_range(f"acked{i}-", lo, hi)
        direct.set(key, i)
        acked[key] = str(i)
    assert direct.execute_command("WAIT", 1, 10000) == 1, "the replica did not acknowledge"
    other = cluster_client(masters[1])
    for i in range(100):
        other.set(f"spread{i}", i)
        acked[f"spread{i}"] = str(i)
    other.close()

    victim.stop()
    out = umcluster("failover", "--to", heir.addr, masters[1].addr)
    assert out.returncode == 0, output(out)
    assert "unreachable" in out.stdout
    assert info_fields(heir, "replication")["role"] == "master"

    rc = cluster_client(masters[1])
    for key, value in acked.items():
        assert rc.get(key) == value, key
    key = key_in_slot_range("after-", lo, hi)
    assert rc.set(key, "written") is True
    assert heir.client().get(key) == "written"
    rc.close()
    assert_check_clean(masters[1])

    # Idempotent: a second run changes nothing but the epoch.
    again = umcluster("failover", "--to", heir.addr, heir.addr)
    assert again.returncode == 0, output(again)
    assert_check_clean(heir)


def test_failover_with_the_old_master_alive_demotes_it(servers):
    masters, replicas = create_with_replicas(servers)
    old, heir = masters[1], replicas[1]
    out = umcluster("failover", "--to", heir.addr, masters[0].addr)
    assert out.returncode == 0, output(out)
    fields = info_fields(old, "replication")
    assert fields["role"] == "slave" and fields["master_port"] == str(heir.port)
    wait_until(
        lambda: info_fields(old, "replication").get("master_link_status") == "up",
        timeout=20,
        what="old master to replicate from the new one",
    )
    lo, hi = THREE_NODE_RANGES[1]
    key = key_in_slot_range("k", lo, hi)
    moved = raw(old, "SET", key, "v")
    assert moved.startswith("MOVED ") and moved.endswith(heir.addr), moved
    rc = cluster_client(masters[0])
    assert rc.set(key, "v") is True
    rc.close()
    assert_check_clean(old)


class Sentinel:
    def __init__(self, workdir, config_text):
        self.port = free_port()
        self.dir = os.path.join(workdir, f"sentinel-{self.port}")
        os.makedirs(self.dir)
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write(f"bind {HOST}\ndir {self.dir}\n")
            f.write(f"logfile {self.dir}/sentinel.log\n")
            # The generated file starts with `port 26379`: this Sentinel's port replaces it.
            f.write(config_text.replace("port 26379\n", f"port {self.port}\n", 1))
        self.proc = subprocess.Popen(
            ["redis-sentinel", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def masters(self):
        with redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=2) as r:
            return r.execute_command("SENTINEL", "MASTERS")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("redis-sentinel") is None, reason="redis-sentinel not installed")
def test_sentinel_fails_a_shard_over_automatically(servers):
    masters, replicas = create_with_replicas(servers)
    hook = os.path.join(servers.workdir, "umcluster-sentinel-hook")
    os.symlink(conftest.UMCLUSTER_BIN, hook)
    conf = umcluster("sentinel-config", "--quorum", "2", "--down-after", "1000", "--hook", hook,
                     masters[0].addr)
    assert conf.returncode == 0, output(conf)
    assert conf.stdout.startswith("port 26379\n")
    assert conf.stdout.count("sentinel monitor ") == 3
    sentinels = [Sentinel(servers.workdir, conf.stdout) for _ in range(3)]
    try:
        def all_discovered():
            for s in sentinels:
                try:
                    ms = s.masters()
                except Exception:
                    return False
                if isinstance(ms, dict):  # some redis-py versions key the reply by name
                    ms = list(ms.values())
                if len(ms) != 3:
                    return False
                for m in ms:
                    m = dict(zip(m[::2], m[1::2])) if isinstance(m, list) else m
                    if int(m["num-other-sentinels"]) != 2 or int(m["num-slaves"]) != 1:
                        return False
            return True

        wait_until(all_discovered, timeout=30, what="sentinels to discover each other and replicas")

        victim, heir = masters[2], replicas[2]
        lo, hi = THREE_NODE_RANGES[2]
        victim.stop()

        def writes_resume():
            try:
                rc = cluster_client(masters[0])
                try:
                    key = key_in_slot_range("auto-", lo, hi)
                    return rc.set(key, "ok") is True and rc.get(key) == "ok"
                finally:
                    rc.close()
            except Exception:
                return False

        wait_until(writes_resume, timeout=30, interval=0.2, what="writes to the failed shard")
        assert info_fields(heir, "replication")["role"] == "master"
        wait_until(
            lambda: umcluster("check", masters[0].addr).returncode == 0,
            timeout=30,
            interval=0.2,
            what="umcluster check to be clean",
        )
    finally:
        for s in sentinels:
            s.stop()


def test_sentinel_hook_subcommand_fails_back(servers):
    masters, replicas = create_with_replicas(servers)
    old, heir = masters[1], replicas[1]
    out = umcluster("failover", "--to", heir.addr, old.addr)
    assert out.returncode == 0, output(out)
    wait_until(
        lambda: info_fields(old, "replication").get("master_link_status") == "up",
        timeout=20,
        what="old master to replicate from the new one",
    )
    # What Sentinel would run after promoting `old` back (arguments as Sentinel passes them).
    host, port = old.addr.rsplit(":", 1)
    hhost, hport = heir.addr.rsplit(":", 1)
    hook = umcluster("sentinel-hook", "umcluster-1", "leader", "start", hhost, hport, host, port)
    assert hook.returncode == 0, output(hook)
    assert info_fields(old, "replication")["role"] == "master"
    assert info_fields(heir, "replication")["master_port"] == str(old.port)
    master_line = next(f for f in node_lines(masters[0]) if f[1].startswith(old.addr + "@"))
    lo, hi = THREE_NODE_RANGES[1]
    assert "master" in master_line[2] and master_line[8] == f"{lo}-{hi}", master_line
    assert_check_clean(heir)
    bad = umcluster("sentinel-hook", "only", "three", "args")
    assert bad.returncode != 0 and "usage" in output(bad)


def test_returning_master_with_an_old_saved_table_rejoins_as_replica(servers):
    masters, replicas = create_with_replicas(servers, config_file=True)
    victim, heir = masters[0], replicas[0]
    lo, hi = THREE_NODE_RANGES[0]
    direct = victim.client()
    keys = [key_in_slot_range(f"r{i}-", lo, hi) for i in range(50)]
    for k in keys:
        direct.set(k, k)
    assert direct.execute_command("WAIT", 1, 10000) == 1
    victim.stop()
    out = umcluster("failover", "--to", heir.addr, masters[1].addr)
    assert out.returncode == 0, output(out)
    new_epoch = raw(heir, "UMCTL", "GETEPOCH")

    victim.start(attempts=1, port=victim.port)
    # Back with its saved (stale) table: the epoch tells it apart.
    assert raw(victim, "UMCTL", "GETEPOCH") == 1 < new_epoch
    # It is a master nobody lists, so it needs --master.
    out = umcluster("add-replica", victim.addr, masters[1].addr)
    assert out.returncode != 0 and "--master" in output(out)
    out = umcluster("add-replica", "--master", heir.addr, victim.addr, masters[1].addr)
    assert out.returncode == 0, output(out)
    assert raw(victim, "UMCTL", "GETEPOCH") == new_epoch + 1
    fields = info_fields(victim, "replication")
    assert fields["role"] == "slave" and fields["master_port"] == str(heir.port)
    moved = raw(victim, "SET", keys[0], "x")
    assert moved.startswith("MOVED ") and moved.endswith(heir.addr), moved
    wait_until(
        lambda: info_fields(victim, "replication").get("master_link_status") == "up",
        timeout=20,
        what="returned master to sync from the new one",
    )
    with conftest.RawConnection(victim.port) as c:
        assert c.call("READONLY") == "OK"
        wait_until(lambda: c.call("GET", keys[-1]) == keys[-1], timeout=20, what="data on the replica")
    assert_check_clean(victim)
    assert victim.addr in umcluster("check", heir.addr).stdout

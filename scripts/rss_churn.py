#!/usr/bin/env python3
"""Memory under churn: starts one redis-server with the module (UMCLUSTER_MODULE, default
target/debug/libumcluster.so), then for ROUNDS rounds pushes 200 topologies (random cuts, higher
epochs), 200 SETREPLs, 2000 ASKING/READONLY/READWRITE from fresh and reused connections, 500 bad
commands and 200 CLUSTER SLOTS/NODES, printing `used_memory` (which counts the module's
allocations: they go through RedisModule_Alloc) and the process RSS after each round.
Flat numbers after the first rounds mean no growth. Usage: scripts/rss_churn.py [ROUNDS]"""

import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.environ.get("UMCLUSTER_MODULE", os.path.join(HERE, "..", "target", "debug", "libumcluster.so"))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    port = free_port()
    d = tempfile.mkdtemp(prefix="umcluster-rss-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", d, "--loadmodule", os.path.abspath(MODULE)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        deadline = time.time() + 15
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        me, peer = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1 if port < 65535 else port - 1}"
        rng = random.Random(6)
        epoch = 0
        print("round used_memory rss_kb tracked_connections")
        for rnd in range(ROUNDS):
            for _ in range(200):
                epoch += 1
                cut = rng.randrange(1, 16384)
                r.execute_command("UMCTL", "SETCLUSTER", "v2", epoch, "NOFLAG", "db", me, 1, f"0-{cut - 1}",
                                  "PEER", peer, 1, f"{cut}-16383")
                r.execute_command("UMCTL", "SETREPL", epoch, "NOFLAG", "master", "db", me, 1, peer, peer)
            for i in range(2000):
                c = redis.Redis(port=port) if i % 20 == 0 else r
                c.execute_command(["ASKING", "READONLY", "READWRITE"][i % 3])
                if c is not r:
                    c.close()
            for _ in range(500):
                try:
                    r.execute_command("UMCTL", "SETCLUSTER", "v2", rng.randrange(10**6), "NOFLAG", "db",
                                      bytes(rng.randrange(256) for _ in range(20)))
                except redis.ResponseError:
                    pass
            for _ in range(100):
                r.execute_command("CLUSTER", "SLOTS")
                r.execute_command("CLUSTER", "NODES")
            info = r.info("memory")
            um = r.info("umcluster")
            print(rnd, info["used_memory"], rss_kb(proc.pid), um.get("umcluster_tracked_connections"), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The native baseline for the slot migration benchmark (`make bench-native-reshard`): the same
move done by native Redis Cluster and `redis-cli --cluster reshard`, which an in-process mover
has to beat (issue 4).

Two plain redis-server nodes with `cluster-enabled yes` on free loopback ports; the first owns
every slot and holds `--keys` keys of `--size` bytes (`DEBUG POPULATE`), the second owns none.
`redis-cli --cluster reshard` then moves every slot but one (16383, which holds the probe's
keys elsewhere in bench/migration.py; here it keeps the comparison equal) to the second node,
`--pipeline` keys per `MIGRATE` (redis-cli's default is 10), while a separate process PINGs the
source every millisecond (longest round trip = longest stall). No client load: compare with
`bench/migration.py --no-load`.

Usage: bench/native_reshard.py [--keys N] [--size BYTES] [--pipeline N]
Needs redis-server and redis-cli (redis-tools). Stops only the processes it starts.
"""

import argparse
import datetime
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import cli, pinger, server_version, wait_until  # noqa: E402  (same probes as the module's benchmark)
# A free port below 55535: a cluster node also listens on port + 10000 (its bus).
from bench import free_port  # noqa: E402


KEEP_SLOT = 16383


class Node:
    def __init__(self, workdir, name):
        self.port = free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log",
                "--enable-debug-command", "local", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"redis-server on {self.port}", lambda: cli(self.port, "PING") == "PONG")
        self.id = cli(self.port, "CLUSTER", "MYID")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--pipeline", type=int, default=10, help="keys per MIGRATE (redis-cli --cluster-pipeline)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="umcluster-native-reshard-")
    nodes = []
    try:
        src, dst = Node(workdir, "src"), Node(workdir, "dst")
        nodes += [src, dst]
        assert cli(src.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383") == "OK"
        assert cli(dst.port, "CLUSTER", "MEET", "127.0.0.1", str(src.port)) == "OK"
        wait_until("cluster state ok on both nodes",
                   lambda: all("cluster_state:ok" in cli(n.port, "CLUSTER", "INFO") for n in nodes))
        wait_until("both nodes know each other",
                   lambda: all(len(cli(n.port, "CLUSTER", "NODES").splitlines()) == 2 for n in nodes))
        t = time.monotonic()
        assert cli(src.port, "DEBUG", "POPULATE", str(args.keys), "key", str(args.size)) == "OK"
        print(f"loaded {args.keys:,} keys x {args.size} B in {time.monotonic() - t:.1f}s", flush=True)
        stay = int(cli(src.port, "CLUSTER", "COUNTKEYSINSLOT", str(KEEP_SLOT)) or 0)

        stop = multiprocessing.Event()
        worst = multiprocessing.Value("d", 0.0)
        ping = multiprocessing.Process(target=pinger, args=(src.port, stop, worst))
        ping.start()
        t0 = time.monotonic()
        out = subprocess.run(
            ["redis-cli", "--cluster", "reshard", src.addr, "--cluster-from", src.id,
             "--cluster-to", dst.id, "--cluster-slots", str(KEEP_SLOT), "--cluster-yes",
             "--cluster-pipeline", str(args.pipeline)],
            capture_output=True, text=True)
        seconds = time.monotonic() - t0
        stop.set()
        ping.join(timeout=10)
        if out.returncode != 0:
            raise SystemExit(f"reshard failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        moved = args.keys - stay
        on_dst = int(cli(dst.port, "DBSIZE"))
        mb = moved * args.size / 1e6
        print()
        print(f"Native reshard, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} cores, {server_version()}, "
              f"--cluster-pipeline {args.pipeline}")
        print("| keys moved | value MB | seconds | keys/s | MB/s | longest PING (ms) |")
        print("|---|---|---|---|---|---|")
        print(f"| {moved:,} | {mb:,.0f} | {seconds:.1f} | {moved / seconds:,.0f} | {mb / seconds:,.1f} | "
              f"{worst.value:.1f} |")
        if on_dst != moved:
            print(f"WARNING: destination holds {on_dst:,} keys, expected {moved:,}")
            return 1
        return 0
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Slot migration benchmark (`make bench-migration`; not part of `make test`).

Two module nodes on free loopback ports. The source owns every slot and holds `--keys` keys of
`--size` bytes (`DEBUG POPULATE`, the fastest way to load); the destination joins with no slots
(`umcluster add-node`). Then `umcluster migrate` moves every slot but one (16383, where the probe
keys live, so the probes always hit an owned, stable slot) from the source to the destination,
while two probes run against the source:

- stall: a separate process sends PING every 1 ms on its own connection and records the longest
  round trip (an event-loop stall shows up there; so, on a loaded 2-core machine, does plain CPU
  contention); the same probe runs during the "before" throughput runs, which gives the longest
  PING the machine alone causes under that load;
- throughput: `redis-benchmark` (SET on keys of the probe slot, 20 clients, -P 16) run back to
  back before the move and during it; the table gives the median rate of each phase.

Reports seconds, keys/s, MB/s (value bytes: keys x size), longest stall, and throughput during vs
before. Usage: bench/migration.py [--keys N | --hash-fields N | --stream-entries N] [--size BYTES] [--runs-before N] [--no-load]
[--clients N --pipeline P]
(--no-load: no throughput runs during the move, to see the mover's own speed.)
Needs the release build (`cargo build --release`), redis-server and redis-benchmark. Stops only
the processes it starts.
"""

import argparse
import datetime
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.environ.get("UMCLUSTER_MODULE", os.path.join(ROOT, "target/release/libumcluster.so"))
TOOL = os.environ.get("UMCLUSTER_BIN", os.path.join(ROOT, "target/release/umcluster"))
PROBE_SLOT = 16383


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def tag_for_slot(slot):
    n = 0
    while crc16(str(n).encode()) % 16384 != slot:
        n += 1
    return str(n)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=600)
    return out.stdout.strip()


def wait_until(what, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Server:
    def __init__(self, workdir, name):
        self.port = free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log",
                "--enable-debug-command", "local", "--loadmodule", MODULE]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"redis-server on {self.port}", lambda: cli(self.port, "PING") == "PONG")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def pinger(port, stop, result):
    """Runs in its own process: PING every 1 ms, longest round trip in ms into `result`.

    With permission (root), the probe raises its own scheduling priority so that what it
    measures is the server's stall rather than its own wait for a CPU on a busy machine."""
    try:
        os.nice(-15)
    except OSError:
        pass
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    worst, count = 0.0, 0
    while not stop.is_set():
        t = time.perf_counter()
        s.sendall(b"PING\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += s.recv(64)
        worst = max(worst, time.perf_counter() - t)
        count += 1
        time.sleep(0.001)
    result.value = worst * 1000
    s.close()


def benchmark_rps(port, tag, clients=20, pipeline=16, requests=200_000):
    """One redis-benchmark run: SET on 1000 keys of the probe slot; requests per second."""
    requests = max(10_000, requests * clients * pipeline // (20 * 16))  # light loads: shorter runs
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(clients), "-P", str(pipeline), "-n", str(requests),
         "-r", "1000", "-q", "SET", f"{{{tag}}}:__rand_int__", "xxxxxxxxxx"],
        capture_output=True, text=True, timeout=600,
    )
    rates = [float(m) for m in re.findall(r"([\d.]+) requests per second", out.stdout)]
    return rates[-1] if rates else 0.0


def main_thread_cpu_s(pid):
    """CPU seconds of a process's main thread (utime + stime of /proc/PID/task/PID/stat)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def info_field(port, section, name):
    for line in cli(port, "INFO", section).splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def server_version():
    """The `v=...` field of `redis-server --version`, for the result's heading."""
    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]


def used_memory(port):
    for line in cli(port, "INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--runs-before", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20,
                    help="redis-benchmark connections of the client load (default 20: saturates the source)")
    ap.add_argument("--pipeline", type=int, default=16,
                    help="redis-benchmark -P of the client load (default 16); --clients 2 --pipeline 1 is a light load")
    ap.add_argument("--hash-fields", type=int, default=0,
                    help="instead of --keys strings, one hash of this many fields of --size bytes "
                         "(a huge key: it moves in pieces)")
    ap.add_argument("--stream-entries", type=int, default=0,
                    help="instead of --keys strings, one stream of this many one-field entries of --size "
                         "bytes (no consumer groups: it moves in pieces)")
    ap.add_argument("--no-load", action="store_true",
                    help="no redis-benchmark during the move (the mover's speed alone; the PING probe still runs)")
    args = ap.parse_args()
    for path in (MODULE, TOOL):
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: run `cargo build --release`")
    # Both nodes hold the data at some point (~2x the raw size each with overhead): check memory.
    need = args.keys * (args.size + 90) * 2.2
    with open("/proc/meminfo") as f:
        avail = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024
    if need > avail:
        raise SystemExit(f"needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available: use --keys")

    workdir = tempfile.mkdtemp(prefix="umcluster-migbench-")
    servers = []
    try:
        src, dst = Server(workdir, "src"), Server(workdir, "dst")
        servers += [src, dst]
        subprocess.run([TOOL, "create", src.addr], check=True, capture_output=True)
        t = time.monotonic()
        if args.stream_entries or args.hash_fields:
            args.keys = 1
            kind, count, add = (("stream", args.stream_entries, "'XADD', KEYS[1], '*', 'f'")
                                if args.stream_entries else
                                ("hash", args.hash_fields, "'HSET', KEYS[1], 'field:' .. i"))
            fill = (f"for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do "
                    f"redis.call({add}, string.rep('x', tonumber(ARGV[3]))) end")
            for first in range(1, count + 1, 100_000):
                last = min(count, first + 99_999)
                cli(src.port, "EVAL", fill, "1", "bigkey", str(first), str(last), str(args.size))
            print(f"loaded 1 {kind} of {count:,} items x {args.size} B in "
                  f"{time.monotonic() - t:.1f}s, used_memory {used_memory(src.port) / 2**20:.0f} MiB",
                  flush=True)
        else:
            assert cli(src.port, "DEBUG", "POPULATE", str(args.keys), "key", str(args.size)) == "OK"
            print(f"loaded {args.keys:,} keys x {args.size} B in {time.monotonic() - t:.1f}s, "
                  f"used_memory {used_memory(src.port) / 2**20:.0f} MiB", flush=True)
        subprocess.run([TOOL, "add-node", dst.addr, src.addr], check=True, capture_output=True)
        tag = tag_for_slot(PROBE_SLOT)
        stay = int(cli(src.port, "CLUSTER", "COUNTKEYSINSLOT", str(PROBE_SLOT)) or 0)

        # The same stall probe during the "before" runs: what the machine alone costs a PING
        # under that load, to read the stall during the move against.
        stop_before = multiprocessing.Event()
        worst_before = multiprocessing.Value("d", 0.0)
        ping_before = multiprocessing.Process(target=pinger, args=(src.port, stop_before, worst_before))
        ping_before.start()
        cpu_b0, t_b0 = main_thread_cpu_s(src.proc.pid), time.monotonic()
        load = dict(clients=args.clients, pipeline=args.pipeline)
        before = [benchmark_rps(src.port, tag, **load) for _ in range(args.runs_before)]
        busy_before = (main_thread_cpu_s(src.proc.pid) - cpu_b0) / (time.monotonic() - t_b0)
        stop_before.set()
        ping_before.join(timeout=10)

        stop = multiprocessing.Event()
        worst = multiprocessing.Value("d", 0.0)
        ping = multiprocessing.Process(target=pinger, args=(src.port, stop, worst))
        ping.start()
        # The destination's loop, too: it applies what arrives (a huge key's RESTORE holds it).
        worst_dst = multiprocessing.Value("d", 0.0)
        ping_dst = multiprocessing.Process(target=pinger, args=(dst.port, stop, worst_dst))
        ping_dst.start()
        last_bytes = [0]

        def watch():
            while mig.poll() is None:
                out = cli(src.port, "UMCTL", "MIGRATIONS")
                m = re.search(r"bytes_moved\n(\d+)", out)
                if m:
                    last_bytes[0] = max(last_bytes[0], int(m.group(1)))
                time.sleep(0.2)

        cpu0 = main_thread_cpu_s(src.proc.pid)
        dst_cpu0 = main_thread_cpu_s(dst.proc.pid)
        mover0 = int(info_field(src.port, "umcluster", "umcluster_migration_cpu_us") or 0)
        t0 = time.monotonic()
        mig = subprocess.Popen([TOOL, "migrate", "--slots", f"0-{PROBE_SLOT - 1}", "--to", dst.addr, src.addr],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        during = []
        while mig.poll() is None:
            if args.no_load:
                time.sleep(0.01)
            else:
                during.append(benchmark_rps(src.port, tag, **load))
        seconds = time.monotonic() - t0
        main_cpu = main_thread_cpu_s(src.proc.pid) - cpu0
        dst_cpu = main_thread_cpu_s(dst.proc.pid) - dst_cpu0
        mover_cpu = (int(info_field(src.port, "umcluster", "umcluster_migration_cpu_us") or 0) - mover0) / 1e6
        out = mig.stdout.read()
        stop.set()
        ping.join(timeout=10)
        ping_dst.join(timeout=10)
        if mig.returncode != 0:
            raise SystemExit(f"umcluster migrate failed:\n{out}")
        moved = args.keys - stay
        left = int(cli(src.port, "DBSIZE"))
        on_dst = int(cli(dst.port, "DBSIZE"))
        mb = (args.stream_entries or args.hash_fields or moved) * args.size / 1e6
        rb, rd = statistics.median(before), (statistics.median(during) if during else 0.0)
        print()
        print(f"Slot migration, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} cores, {server_version()}")
        print("| keys moved | value MB | seconds | keys/s | MB/s | longest PING during (ms) | "
              "longest PING before, under load (ms) | "
              "throughput before (rps) | during (rps) | during/before | bytes moved (reported) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {moved:,} | {mb:,.0f} | {seconds:.1f} | {moved / seconds:,.0f} | {mb / seconds:,.1f} | "
              f"{worst.value:.1f} | {worst_before.value:.1f} | {rb:,.0f} | {rd:,.0f} | "
              f"{rd / rb if rb else 0:.2f} | {last_bytes[0]:,} |")
        print(f"source main thread on CPU: {busy_before:.0%} of the time before the move; during it "
              f"{main_cpu:.1f} s ({main_cpu / seconds:.0%} of the time), "
              f"of which moving keys {mover_cpu:.1f} s ({mover_cpu / main_cpu if main_cpu else 0:.0%}), "
              f"clients and the rest {main_cpu - mover_cpu:.1f} s")
        print(f"destination main thread on CPU: {dst_cpu:.1f} s ({dst_cpu / seconds:.0%} of the time); "
              f"longest PING on the destination during the move: {worst_dst.value:.1f} ms")
        print(f"(source keeps {left:,} keys (slot {PROBE_SLOT} and probe keys), destination holds {on_dst:,}; "
              f"{len(during)} throughput runs during the move)")
        with open(os.path.join(src.dir, "redis.log"), errors="replace") as f:
            long_ticks = [l.strip() for l in f if "held the event loop" in l]
        for line in long_ticks:
            print(f"source log: {line}")
        if on_dst != moved:
            print(f"WARNING: destination holds {on_dst:,} keys, expected {moved:,}")
            return 1
        return 0
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""umcluster benchmark suite (`make bench`): what the in-process routing filter costs.

Three parts, each printing a table:

  instr       Instructions inside processCommand() per command, counted by callgrind
              (deterministic), for plain redis-server, the module owning all slots, the module
              owning half the slots (commands to owned keys), and native cluster mode
              (cluster-enabled yes, one node with every slot). Also counts allocator calls per
              command inside processCommand (the allocation proof) and the cost of a MOVED reply.
  throughput  redis-benchmark, 50 clients, -P 1 and -P 16, plain vs module vs plain behind
              haproxy (TCP mode: the cheapest possible proxy hop), alternating runs, median
              ratios, p50/p99 latency, and the serving processes' CPU time per request.

Usage: bench/bench.py [instr|throughput|all] [--rounds N] [--requests N] [--instr-runs N]
                      [--commands GET,SET] [--pin]

Needs redis-server, redis-benchmark, redis-cli (redis-tools), valgrind, haproxy (Debian packages:
`apt-get install redis-server redis-tools valgrind haproxy`), and the release build of the module
(`cargo build --release`). Only processes this script starts are ever stopped.
"""

import argparse
import csv
import datetime
import io
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.environ.get("UMCLUSTER_MODULE", os.path.join(ROOT, "target/release/libumcluster.so"))
REDIS = os.environ.get("REDIS_SERVER", "redis-server")

MODES = ["plain", "module-all", "module-half", "native"]
HALF = 8191  # module-half owns slots 0..=HALF; a (never contacted) peer owns the rest


# --- keys -------------------------------------------------------------------------------------

def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    k = key.encode()
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    return crc16(k) & 16383


def key_where(prefix: str, owned: bool) -> str:
    """A key named prefix<n> whose slot is owned (or not) by module-half."""
    n = 0
    while True:
        k = f"{prefix}{n}"
        if (key_slot(k) <= HALF) == owned:
            return k
        n += 1


K = key_where("bench:key:", True)
TAG = key_where("bench:tag", True)  # hash tag for MSET
PEER_KEY = key_where("bench:key:", False)
SCRIPT = "return redis.call('GET', KEYS[1])"


def workloads(sha):
    """(label, command args): every command touches keys module-half owns."""
    return [
        ("GET", ["GET", K]),
        ("SET", ["SET", K, "value"]),
        ("MSET", ["MSET", "{%s}:a" % TAG, "1", "{%s}:b" % TAG, "2"]),
        ("INCR", ["INCR", key_where("bench:counter:", True)]),
        ("LPUSH", ["LPUSH", key_where("bench:list:", True), "x"]),
        ("ZADD", ["ZADD", key_where("bench:zset:", True), "1", "member"]),
        ("HSET", ["HSET", key_where("bench:hash:", True), "field", "value"]),
        ("EVALSHA", ["EVALSHA", sha, "1", K]),
    ]


# --- processes --------------------------------------------------------------------------------

def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Below 55535: a cluster node also listens on port + 10000 (its bus).
        if not 7001 <= port <= 7010 and port < 55535:
            return port


def cli(port, *args, check=True):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    if check and (out.returncode != 0 or out.stdout.startswith("ERR") or "ERR" in out.stdout[:5]):
        raise RuntimeError(f"redis-cli {' '.join(args)} -> {out.stdout}{out.stderr}")
    return out.stdout.strip()


def wait_until(what, cond, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class Server:
    """A redis-server in `mode`, optionally under callgrind; stopped by its own pid."""

    def __init__(self, mode, workdir, callgrind=False):
        self.mode, self.port = mode, free_port()
        self.dir = tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir)
        args = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--logfile", os.path.join(self.dir, "log")]
        if mode.startswith("module"):
            args += ["--loadmodule", MODULE]
        if mode == "native":
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if callgrind:
            args = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                    "--toggle-collect=processCommand",
                    f"--callgrind-out-file={self.dir}/callgrind.out.%p",
                    f"--log-file={self.dir}/valgrind.log"] + args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._setup()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _setup(self):
        mode = self.mode
        wait_until(f"{mode} server on {self.port}", lambda: cli(self.port, "PING") == "PONG",
                   timeout=120)
        if mode == "module-all":
            cli(self.port, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "bench",
                f"127.0.0.1:{self.port}", "1", "0-16383")
        elif mode == "module-half":
            cli(self.port, "UMCTL", "SETCLUSTER", "v2", "1", "NOFLAG", "bench",
                f"127.0.0.1:{self.port}", "1", f"0-{HALF}",
                "PEER", "127.0.0.1:1", "1", f"{HALF + 1}-16383")
        elif mode == "native":
            cli(self.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            wait_until("native cluster state ok",
                       lambda: "cluster_state:ok" in cli(self.port, "CLUSTER", "INFO"))
        self.sha = cli(self.port, "SCRIPT", "LOAD", SCRIPT)
        cli(self.port, "SET", K, "value")

    def stop(self):
        if self.proc.poll() is None:
            cli(self.port, "SHUTDOWN", "NOSAVE", check=False)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HAProxy:
    """haproxy in TCP mode in front of `backend_port`."""

    def __init__(self, backend_port, workdir):
        if not shutil.which("haproxy"):
            raise SystemExit("haproxy not found: apt-get install haproxy")
        self.port = free_port()
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend redis
    bind 127.0.0.1:{self.port}
    default_backend redis
backend redis
    server plain 127.0.0.1:{backend_port}
""")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("haproxy", lambda: cli(self.port, "PING") == "PONG")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# --- callgrind --------------------------------------------------------------------------------

# Every zmalloc()/RedisModule_Alloc() ends in one of these (libjemalloc's entry points on Debian).
ALLOC_FNS = re.compile(r"^(malloc|calloc|realloc)$")
MODULE_ALLOC_FNS = re.compile(r"^RM_(Alloc|Calloc|Realloc|TryAlloc)$")


def parse_callgrind(path):
    """(total instructions, allocator calls from non-allocator code, module RM_Alloc calls)."""
    names = {}  # compressed "(id)" -> name, per kind

    def name(kind, text):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", text)
        if not m:
            return text
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), "?")

    total = allocs = module_allocs = 0
    fn = cfn = ""
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = name("fn", line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name("fn", line[4:].strip())
            elif line.startswith("calls="):
                n = int(line[6:].split()[0])
                short = cfn.split("'")[0]
                if ALLOC_FNS.match(short):
                    allocs += n
                if MODULE_ALLOC_FNS.match(short):
                    module_allocs += n
            elif line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    return total, allocs, module_allocs


def send_error_pipeline(port, args, n, pipeline):
    """Sends `args` n times, `pipeline` at a time, each answered by a one-line error reply
    (redis-benchmark stops at the first error reply, so MOVED is measured with this)."""
    cmd = ("*%d\r\n" % len(args) + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        for done in range(0, n, pipeline):
            batch = min(pipeline, n - done)
            s.sendall(cmd * batch)
            got = b""
            while got.count(b"\r\n") < batch:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("connection closed")
                got += chunk
            if not got.startswith(b"-"):
                raise RuntimeError(f"expected an error reply, got {got[:80]!r}")


def callgrind_run(server, args, n, pipeline=16, errors=False):
    pid = str(server.proc.pid)
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    if errors:
        send_error_pipeline(server.port, args, n, pipeline)
    else:
        subprocess.run(["redis-benchmark", "-p", str(server.port), "-n", str(n), "-c", "1",
                        "-P", str(pipeline), "-q", *args], check=True, capture_output=True)
    before = set(os.listdir(server.dir))
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    dumps = sorted(set(os.listdir(server.dir)) - before)
    dumps = [d for d in dumps if d.startswith("callgrind.out")]
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    total, allocs, module_allocs = parse_callgrind(os.path.join(server.dir, dumps[-1]))
    return total / n, allocs / n, module_allocs / n


def instr(opts, workdir):
    n = opts.requests
    runs = {}  # (mode, label) -> [(instr, allocs, module allocs)], one per server run
    for run in range(opts.instr_runs):
        for mode in MODES:
            print(f"# callgrind: {mode}, run {run + 1} of {opts.instr_runs} ...", file=sys.stderr,
                  flush=True)
            server = Server(mode, workdir, callgrind=True)
            try:
                loads = workloads(server.sha)
                if mode == "module-half":
                    loads.append(("MOVED (GET)", ["GET", PEER_KEY]))
                for label, args in loads:
                    runs.setdefault((mode, label), []).append(
                        callgrind_run(server, args, n, errors=label.startswith("MOVED")))
                if mode == "module-half":
                    reply = cli(server.port, "GET", PEER_KEY, check=False)
                    if not reply.startswith("MOVED"):
                        raise RuntimeError(f"expected MOVED for {PEER_KEY}, got {reply!r}")
            finally:
                server.stop()
    # Each server start seeds the hash of the server's command table at random, and where a
    # command's name lands in it changes its lookup by up to ~150 instructions: the median
    # over several starts, with the spread shown below the table.
    results = {key: sorted(values)[len(values) // 2] for key, values in runs.items()}
    labels = [label for label, _ in workloads("x")]
    print(f"\nInstructions per command inside processCommand (callgrind, {n} commands, -P 16, "
          f"median of {opts.instr_runs} server starts)")
    print(f"| {'command':<12} | " + " | ".join(f"{m:>20}" for m in MODES) + " |")
    print("|" + "|".join(["-" * 14] + ["-" * 22] * len(MODES)) + "|")
    for label in labels:
        plain = results[("plain", label)][0]
        cells = []
        for m in MODES:
            v = results[(m, label)][0]
            cells.append(f"{v:>8.0f}" + ("" if m == "plain" else f" ({(v / plain - 1) * 100:+5.1f} %)"))
        print(f"| {label:<12} | " + " | ".join(f"{c:>20}" for c in cells) + " |")
    print(f"\nSpread over the {opts.instr_runs} server starts (lowest-highest)")
    print(f"| {'command':<12} | " + " | ".join(f"{m:>20}" for m in MODES) + " |")
    print("|" + "|".join(["-" * 14] + ["-" * 22] * len(MODES)) + "|")
    for label in labels:
        cells = []
        for m in MODES:
            values = [v[0] for v in runs[(m, label)]]
            cells.append(f"{min(values):.0f}-{max(values):.0f}")
        print(f"| {label:<12} | " + " | ".join(f"{c:>20}" for c in cells) + " |")
    moved = results[("module-half", "MOVED (GET)")][0]
    get = results[("module-half", "GET")][0]
    print(f"\nMOVED reply (GET of a key a peer owns), module-half: {moved:.0f} instructions "
          f"per command ({moved / get:.2f}x an owned GET)")
    print("\nAllocator calls per command inside processCommand "
          "(malloc/calloc/realloc / of which RedisModule_Alloc by the module)")
    print(f"| {'command':<12} | " + " | ".join(f"{m:>14}" for m in MODES) + " |")
    print("|" + "|".join(["-" * 14] + ["-" * 16] * len(MODES)) + "|")
    for label in labels + ["MOVED (GET)"]:
        cells = []
        for m in MODES:
            r = results.get((m, label))
            cells.append("-" if r is None else f"{r[1]:.2f} / {r[2]:.2f}")
        print(f"| {label:<12} | " + " | ".join(f"{c:>14}" for c in cells) + " |")
    return results


# --- throughput -------------------------------------------------------------------------------

def cpu_ns(pids):
    """On-CPU time (user + system, ns) of every thread of these processes so far, from the
    scheduler's own accounting (/proc/PID/task/TID/schedstat): exact, unlike the 10 ms ticks of
    /proc/PID/stat."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that ended meanwhile
    return total


def pin(pids, cpu):
    """Every thread of these processes onto one CPU."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})


def bench_once(port, args, pipeline, n, pids, clients=50, client_cpu=None):
    """One redis-benchmark run (on CPU `client_cpu` if given): rps, p50 and p99 latency (ms), and
    the CPU time the serving processes (`pids`) spent per request (ns)."""
    before = cpu_ns(pids)
    taskset = [] if client_cpu is None else ["taskset", "-c", str(client_cpu)]
    out = subprocess.run([*taskset, "redis-benchmark", "-p", str(port), "-n", str(n),
                          "-c", str(clients), "-P", str(pipeline), "--csv", *args],
                         check=True, capture_output=True, text=True).stdout
    spent = cpu_ns(pids) - before
    rows = list(csv.DictReader(io.StringIO(out)))
    row = rows[-1]
    return (float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]),
            spent / n)


def throughput(opts, workdir):
    plain = Server("plain", workdir)
    module = Server("module-all", workdir)
    proxy = HAProxy(plain.port, workdir)
    targets = {"plain": plain.port, "module": module.port, "haproxy": proxy.port}
    # Who does the work for each target: the hop's cost is haproxy's CPU plus the server's.
    serving = {"plain": [plain.proc.pid], "module": [module.proc.pid],
               "haproxy": [proxy.proc.pid, plain.proc.pid]}
    client_cpu = None
    if opts.pin:
        # The servers (and haproxy, a server-side hop) on the last CPU, redis-benchmark on the
        # first: the server does not share its core with the load generator, as on a real host.
        pin([plain.proc.pid, module.proc.pid, proxy.proc.pid], os.cpu_count() - 1)
        client_cpu = 0
    wanted = [c.upper() for c in opts.commands.split(",")]
    loads = [w for w in workloads(plain.sha) if w[0] in wanted]
    runs = {}  # (label, P, target) -> [(rps, p50, p99)] per round
    try:
        for r in range(opts.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            print(f"# round {r + 1}/{opts.rounds}: {' '.join(order)}", file=sys.stderr, flush=True)
            for label, args in loads:
                for p in (1, 16):
                    n = opts.requests * (4 if p == 16 else 1)
                    for t in order:
                        runs.setdefault((label, p, t), []).append(
                            bench_once(targets[t], args, p, n, serving[t],
                                       client_cpu=client_cpu))
    finally:
        proxy.stop()
        module.stop()
        plain.stop()
    print(f"\nThroughput, 50 clients, {opts.rounds} alternating rounds (medians; ratios "
          "are medians of per-round ratios to plain). CPU per request: on-CPU time of the "
          "serving processes (the server; haproxy and the server behind it) over the run")
    print("| command | -P | plain rps | module/plain | haproxy/plain | CPU µs/request plain / "
          "module / haproxy+plain | CPU module/plain | p50 ms plain / module / haproxy | "
          "p99 ms plain / module / haproxy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, _ in loads:
        for p in (1, 16):
            pl, mo, hp = (runs[(label, p, t)] for t in ("plain", "module", "haproxy"))
            ratio = lambda xs: statistics.median(x[0] / y[0] for x, y in zip(xs, pl))
            cpu_ratio = lambda xs: statistics.median(x[3] / y[3] for x, y in zip(xs, pl))
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            print(f"| {label} | {p} | {med(pl, 0):.0f} | {ratio(mo):.3f} | {ratio(hp):.3f} | "
                  f"{med(pl, 3) / 1000:.2f} / {med(mo, 3) / 1000:.2f} / {med(hp, 3) / 1000:.2f} | "
                  f"{cpu_ratio(mo):.3f} | "
                  f"{med(pl, 1):.3f} / {med(mo, 1):.3f} / {med(hp, 1):.3f} | "
                  f"{med(pl, 2):.3f} / {med(mo, 2):.3f} / {med(hp, 2):.3f} |")
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("part", nargs="?", default="all", choices=["instr", "throughput", "all"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=50000)
    ap.add_argument("--instr-runs", type=int, default=5,
                    help="server starts per mode for the instruction counts (median shown)")
    ap.add_argument("--pin", action="store_true",
                    help="throughput: servers on the last CPU, redis-benchmark on the first")
    ap.add_argument("--commands", default="GET,SET,MSET,EVALSHA",
                    help="commands for the throughput part (default GET,SET,MSET,EVALSHA)")
    opts = ap.parse_args()
    for tool in ("redis-cli", "redis-benchmark", REDIS):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install redis-server redis-tools")
    if not os.path.exists(MODULE):
        raise SystemExit(f"module not built: {MODULE} (cargo build --release)")
    if opts.part in ("instr", "all") and not shutil.which("valgrind"):
        raise SystemExit("valgrind not found: apt-get install valgrind")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
          f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"{subprocess.run([REDIS, '--version'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="umcluster-bench-") as workdir:
        if opts.part in ("instr", "all"):
            instr(opts, workdir)
        if opts.part in ("throughput", "all"):
            throughput(opts, workdir)


if __name__ == "__main__":
    main()

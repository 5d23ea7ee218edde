"""Shared harness for the Python integration tests of umcluster.

Everything here drives real processes: redis-server 7.0 with (or without) the umcluster module,
the `umcluster` admin tool, redis-cli and redis-benchmark. Nothing is mocked.

- The module and the admin tool come from the environment: `UMCLUSTER_MODULE` (path of
  libumcluster.so) and `UMCLUSTER_BIN` (path of the umcluster binary); `make test-python` sets both.
- `ServerPool` starts redis-server processes on free loopback ports (a port taken by somebody else
  between picking and binding is retried), and stops every one of them at teardown, failure or not.
- When a test fails, the tail of every running server's log is attached to the report.
- `wait_until` is the only way tests wait: it polls a condition until a deadline, never sleeps blindly.
"""

import atexit
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from redis.cluster import RedisCluster

HOST = "127.0.0.1"
#: A command every redis-server is started under (`make valgrind` sets valgrind here); empty: none.
SERVER_WRAPPER = os.environ.get("UMCLUSTER_SERVER_WRAPPER", "")
SLOT_COUNT = 16384
#: What `umcluster create` assigns to three nodes (same split as `redis-cli --cluster create`).
THREE_NODE_RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]


# ---------------------------------------------------------------------------------------------
# Artifacts under test
# ---------------------------------------------------------------------------------------------


def _artifact(var, what):
    path = os.environ.get(var)
    if not path:
        raise pytest.UsageError(
            f"{var} is not set: point it at {what} (e.g. run `make test-python`, which sets "
            f"UMCLUSTER_MODULE=target/debug/libumcluster.so and UMCLUSTER_BIN=target/debug/umcluster)"
        )
    if not os.path.isfile(path):
        raise pytest.UsageError(f"{var}={path}: no such file ({what}); build it with `cargo build`")
    return os.path.abspath(path)


def pytest_configure(config):
    global MODULE, UMCLUSTER_BIN
    MODULE = _artifact("UMCLUSTER_MODULE", "the module, libumcluster.so")
    UMCLUSTER_BIN = _artifact("UMCLUSTER_BIN", "the umcluster admin tool")
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} is not on PATH")


MODULE = None
UMCLUSTER_BIN = None


def module_path():
    """Path of the module under test (set once pytest is configured)."""
    return MODULE


# ---------------------------------------------------------------------------------------------
# Waiting without sleeping blindly
# ---------------------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    pass


def wait_until(predicate, timeout=10.0, what="condition", interval=0.02):
    """Polls `predicate` every `interval` seconds until it returns something truthy, and returns
    that value. Raises `WaitTimeout` naming `what` (and the last exception seen) at the deadline."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the condition may not be checkable yet (server starting...)
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Hash slots (CRC16-XMODEM, as in routing.md)
# ---------------------------------------------------------------------------------------------


def _crc16_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc


def key_slot(key) -> int:
    """Hash slot of `key`, hash tags included."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOT_COUNT


def key_in_slot_range(prefix, lo, hi, start=0):
    """First key `prefix<n>` (n >= start) whose slot is in [lo, hi]."""
    n = start
    while True:
        k = f"{prefix}{n}"
        if lo <= key_slot(k) <= hi:
            return k
        n += 1


# ---------------------------------------------------------------------------------------------
# redis-server processes
# ---------------------------------------------------------------------------------------------

#: Every server currently running, so that a failing test's report can show their logs.
LIVE_SERVERS = []


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server child process on a loopback port."""

    def __init__(self, workdir, with_module=True, extra_args=(), env=None):
        self.with_module = with_module
        self.extra_args = list(extra_args)
        #: Extra environment variables for the server process.
        self.env = dict(env or {})
        self.dir = tempfile.mkdtemp(prefix="srv-", dir=workdir)
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.dir, "redis.log")

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    def start(self, attempts=5, port=None):
        """Starts the server on a free port, or on `port` (a restart keeps its address)."""
        for _ in range(attempts):
            self.port = port or free_port()
            args = [
                "redis-server",
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", self.dir,
                "--logfile", self.log_path,
                "--enable-debug-command", "local",
                "--enable-module-command", "local",
                # Start a replica's full sync at once (the default waits 5 s for more replicas).
                "--repl-diskless-sync-delay", "0",
            ]
            if self.with_module:
                args += ["--loadmodule", MODULE]
            args += self.extra_args
            # `make valgrind` runs every server under a wrapper (valgrind ...).
            args = shlex.split(SERVER_WRAPPER) + args
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
            LIVE_SERVERS.append(self)
            try:
                outcome = wait_until(self._up_or_dead, timeout=120 if SERVER_WRAPPER else 15, what=f"redis-server on port {self.port}")
            except WaitTimeout:
                outcome = "timeout"
            if outcome == "up":
                return self
            log = self.log_tail()
            self.stop()
            if "Address already in use" in log:
                continue  # somebody took the port in between: pick another
            raise AssertionError(f"redis-server did not start on port {self.port} ({outcome}):\n{log}")
        raise AssertionError(f"redis-server did not start after {attempts} attempts")

    def _up_or_dead(self):
        if self.proc.poll() is not None:
            return f"exited with status {self.proc.returncode}"
        try:
            with redis.Redis(host=HOST, port=self.port, socket_timeout=1) as r:
                return "up" if r.ping() else None
        except redis.ConnectionError:
            return None

    def client(self, **kwargs):
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def cluster_client(self, **kwargs):
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        return RedisCluster(host=HOST, port=self.port, **kwargs)

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill(self):
        if self.proc is None:
            return
        if self.proc.poll() is None and SERVER_WRAPPER:
            # A clean exit, so the wrapper (valgrind) gets to write its report.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        self._kill()
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)

    def restart(self):
        """Kills the server (SIGKILL: no shutdown save) and starts it again on the same port."""
        self.stop()
        return self.start(attempts=1, port=self.port)


@atexit.register
def _kill_leftovers():
    """Last resort (interrupted run): no redis-server outlives the test session."""
    for s in list(LIVE_SERVERS):
        s.stop()


class ServerPool:
    """Starts servers and stops all of them at once."""

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="umcluster-test-")
        self.servers = []

    def start(self, with_module=True, extra_args=(), env=None):
        server = RedisServer(self.workdir, with_module=with_module, extra_args=extra_args, env=env)
        self.servers.append(server)
        return server.start()

    def start_many(self, n, with_module=True, extra_args=()):
        return [self.start(with_module=with_module, extra_args=extra_args) for _ in range(n)]

    def stop_all(self):
        for s in self.servers:
            s.stop()
        self.servers.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def umtype_module(tmp_path_factory):
    """Path of tests/modules/umtype.c built as a module (a module data type for the tests), with
    the C compiler the Rust toolchain links with and the redismodule.h of the redis-module crate
    (found with `cargo metadata`; the crate was fetched to build umcluster)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    meta = subprocess.run(
        ["cargo", "metadata", "--offline", "--format-version", "1",
         "--manifest-path", os.path.join(root, "Cargo.toml")],
        capture_output=True, text=True, check=True)
    crate = next(p for p in json.loads(meta.stdout)["packages"] if p["name"] == "redis-module")
    include = os.path.join(os.path.dirname(crate["manifest_path"]), "src", "include")
    assert os.path.exists(os.path.join(include, "redismodule.h")), include
    out = str(tmp_path_factory.mktemp("modules") / "umtype.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-I", include, "-o", out,
                    os.path.join(root, "tests", "modules", "umtype.c")], check=True)
    return out


@pytest.fixture
def servers():
    """Fresh servers for one test (topology-mutating tests)."""
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for s in LIVE_SERVERS:
            report.sections.append((f"redis-server {s.addr} log (tail)", s.log_tail()))


# ---------------------------------------------------------------------------------------------
# The admin tool and the cluster built with it
# ---------------------------------------------------------------------------------------------


def umcluster(*args, timeout=30):
    """Runs the admin tool; returns the CompletedProcess (text output)."""
    return subprocess.run(
        [UMCLUSTER_BIN, *args], capture_output=True, text=True, timeout=timeout
    )


class Cluster:
    """Masters built by `umcluster create`, with the slot ranges the tool assigned."""

    def __init__(self, nodes, ranges):
        self.nodes = nodes
        self.ranges = ranges

    def owner_of(self, slot):
        for node, (lo, hi) in zip(self.nodes, self.ranges):
            if lo <= slot <= hi:
                return node
        raise AssertionError(f"slot {slot} has no owner")

    def client(self, **kwargs):
        return self.nodes[0].cluster_client(**kwargs)


def create_cluster(pool, n=3):
    nodes = pool.start_many(n)
    out = umcluster("create", *[s.addr for s in nodes])
    assert out.returncode == 0, f"umcluster create failed:\n{out.stdout}\n{out.stderr}"
    assert n == 3, "the expected ranges are only written down for three nodes"
    return Cluster(nodes, THREE_NODE_RANGES)


@pytest.fixture(scope="module")
def cluster3():
    """A 3-node cluster built by `umcluster create`, shared by a test file that leaves its
    topology alone."""
    pool = ServerPool()
    try:
        yield create_cluster(pool)
    finally:
        pool.stop_all()


# ---------------------------------------------------------------------------------------------
# Small helpers on replies
# ---------------------------------------------------------------------------------------------


class Err(str):
    """A server error reply, the whole line without the leading `-` (`MOVED 3999 127.0.0.1:7002`)."""

    def __repr__(self):
        return f"Err({str(self)!r})"


class RawConnection:
    """A plain RESP2 connection that keeps error replies verbatim (redis-py strips the error code
    of MOVED, ASK, CLUSTERDOWN... and raises instead). Replies: str for simple and bulk strings,
    int, None, list, or `Err`."""

    def __init__(self, port, host=HOST, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def call(self, *args):
        self.send(*args)
        return self.read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            return Err(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"unexpected RESP line {line!r}")


def raw(server, *args):
    """One command on a fresh raw connection."""
    with RawConnection(server.port) as c:
        return c.call(*args)


def info_fields(server, section):
    """`INFO <section>` of a server as a dict of strings."""
    text = raw(server, "INFO", section)
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v
    return fields

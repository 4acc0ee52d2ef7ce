"""Private servers for tests that stop, kill or restart them (the shared ones are never touched)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(message: str) -> NoReturn:
    """Skip the test on a laptop; fail it under ``CI`` (CI never skips: a missing service is a broken run)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_port(port: int, name: str) -> None:
    """Skip (laptop) or fail (CI) when no server listens on 127.0.0.1:``port``."""
    if not listening(port, timeout=2):
        unavailable(f"{name} is not reachable on 127.0.0.1:{port}; run `bash scripts/services.sh`")


class PrivateRedis:
    """A redis-server of the test's own: a free port, its own directory, AOF with ``appendfsync always``.

    The port and the directory stay the same across ``stop``/``kill`` and ``start``, so a restart
    finds the data it persisted.
    """

    def __init__(self, directory: Path, *, args: tuple[str, ...] = ()) -> None:
        """``args``: more redis-server options, after (and so over) the defaults."""
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--daemonize", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_tool(name: str) -> str:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``): on PATH or in Debian's versioned directory."""
    found = shutil.which(name) or next((str(b / name) for b in PG_BINS if (b / name).exists()), None)
    if found is None:
        unavailable(f"{name} is not installed (Debian: apt-get install postgresql)")
    return found


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a new temporary directory, a free port, trust auth).

    Run as the ``postgres`` user through ``runuser`` when the tests run as root (initdb refuses root),
    so its directory is made outside the tests' private temporary tree. ``stop`` is a fast shutdown,
    ``start`` finds the data again; ``close`` stops it and removes the directory.
    """

    def __init__(self) -> None:
        import pwd
        import tempfile

        self.root = os.geteuid() == 0
        if self.root:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("no postgres user to run a private PostgreSQL as")
        elif pwd.getpwuid(os.geteuid()).pw_name != "postgres":
            unavailable("a private PostgreSQL needs root (runuser) or the postgres user")
        directory = Path(tempfile.mkdtemp(prefix="esf-private-pg-"))
        if self.root:
            os.chown(directory, user.pw_uid, user.pw_gid)
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "server.log"
        self.port = free_port()
        self._run(pg_tool("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self.root else list(argv)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off -c max_connections=200"
        self._run(pg_tool("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._run(pg_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own: its own node name, ports, database and logs under ``directory``.

    It shares the host's epmd with the shared node (different node names); the port and the node's
    database stay the same across ``stop`` and ``start``, so durable queues and their messages survive.
    """

    def __init__(self, directory: Path) -> None:
        binary = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if not binary.exists():
            found = shutil.which("rabbitmq-server")
            if found is None:
                unavailable("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
            binary = Path(found)
        self.binary = str(binary)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"esf-test-{self.port}@localhost"
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        (directory / "env.conf").write_text("")
        (directory / "enabled_plugins").write_text("[].\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 120) -> None:
        d = self.directory
        env = {**os.environ, "HOME": str(d), "RABBITMQ_CONF_ENV_FILE": str(d / "env.conf"),
               "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"), "RABBITMQ_NODENAME": self.name,
               "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
               "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        log = open(d / "server.out", "ab")
        self.proc = subprocess.Popen([self.binary], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"private RabbitMQ on port {self.port} did not start; see {d}/server.out")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the node: a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
        self.proc = None

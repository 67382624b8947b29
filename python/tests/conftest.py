"""Fixtures for the pytest suite: the real local stack (scripts/stack.sh), private
databases with a PostgREST of their own, and an isolated environment per test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every variable the Rust settings read; each test starts with none of them set.
DOX_ENV = [
    "DB_BACKEND",
    "DB_PATH",
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_JWT_SECRET",
    "SUPABASE_SCHEMA",
    "SUPABASE_DUAL_WRITE",
    "SUPABASE_TIMEOUT",
    "DUALWRITE_REST_URL",
    "DUALWRITE_DRAIN",
    "DUALWRITE_UNREPRESENTABLE",
]


class StackEnv(dict):
    """The stack's variables; its repr hides them (pytest prints fixtures in failures)."""

    def __repr__(self) -> str:
        return f"StackEnv({sorted(self)})"


def _stack_env() -> dict:
    out = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "env"], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.fail(f"the local stack is not running; run scripts/stack.sh up first:\n{out.stderr}")
    env = StackEnv()
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            env[k] = v.strip("'").replace("\\", "")
    return env


@pytest.fixture(scope="session")
def stack() -> dict:
    """The shared stack's variables (the project URL of its nginx gateway, keys, admin URLs)."""
    return _stack_env()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No DoX variable set; the working directory is an empty temp dir (no .env, no config/)."""
    for k in DOX_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shared_supabase(clean_env, monkeypatch, stack):
    """The environment of a DoX app pointed at the shared stack (service key)."""
    monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    return stack


def closed_port_url() -> str:
    """A URL nothing listens on (a port just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_child(pid: int, timeout: float) -> int:
    """The exit code of the forked child ``pid``; a child still running after ``timeout`` s is killed
    and the test fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


def psql(url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], check=True, capture_output=True, text=True
    ).stdout


class PrivateDb:
    """A database cloned from the migrated template, served by a PostgREST of its own."""

    def __init__(self, stack: dict, pool: int = 5):
        self.stack = stack
        self.name = f"dw_py_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        admin = stack["DUALWRITE_PG_ADMIN_URL"]
        psql(admin, f"CREATE DATABASE {self.name} TEMPLATE {stack['DUALWRITE_TEMPLATE_DB']}")
        self.port, admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The project's one PostgREST configuration (deploy/postgrest/postgrest.conf, also used by
        # scripts/stack.sh, docker-compose.yml and tests/support/postgrest.rs); PostgREST fills in its
        # $(DW_PGRST_*) values from this environment, which holds nothing else.
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "DW_PGRST_DB_URI": f"{stack['DUALWRITE_AUTHENTICATOR_URL']}/{self.name}",
            "DW_PGRST_JWT_SECRET": stack["SUPABASE_JWT_SECRET"],
            "DW_PGRST_DB_POOL": str(pool),
            "DW_PGRST_SERVER_HOST": "127.0.0.1",
            "DW_PGRST_SERVER_PORT": str(self.port),
            "DW_PGRST_ADMIN_PORT": str(admin_port),
        }
        self.log = tempfile.NamedTemporaryFile("w", suffix=".postgrest.log", delete=False)
        self.proc = subprocess.Popen(
            [stack["DUALWRITE_POSTGREST_BIN"], str(REPO / "deploy" / "postgrest" / "postgrest.conf")],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"private PostgREST not ready: {open(self.log.name).read()}")
            time.sleep(0.05)

    def sql(self, sql: str) -> str:
        base = self.stack["DUALWRITE_PG_ADMIN_URL"].rsplit("/", 1)[0]
        return psql(f"{base}/{self.name}", sql)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        psql(self.stack["DUALWRITE_PG_ADMIN_URL"], f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


@pytest.fixture
def private_db(stack):
    db = PrivateDb(stack)
    yield db
    db.close()


@pytest.fixture(scope="session")
def dualwrite_bin() -> Path:
    """The CLI binary (built by `cargo build`; DUALWRITE_BIN overrides)."""
    p = Path(os.environ.get("DUALWRITE_BIN", REPO / "target" / "debug" / "dualwrite"))
    if not p.exists():
        subprocess.run(["cargo", "build", "--bin", "dualwrite"], cwd=REPO, check=True)
    return p


@pytest.fixture(scope="session")
def switch_bin() -> Path:
    """`examples/switch_primary.rs`, which plays a cutover's switch on the file (built by `cargo build
    --example switch_primary`; DUALWRITE_SWITCH_BIN overrides)."""
    p = Path(os.environ.get("DUALWRITE_SWITCH_BIN", REPO / "target" / "debug" / "examples" / "switch_primary"))
    if not p.exists():
        subprocess.run(["cargo", "build", "--example", "switch_primary"], cwd=REPO, check=True)
    return p


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk the client sends for `delay` seconds
    before it goes to `upstream` (``http://host:port``): a slow Supabase, with a real socket
    in between."""

    def __init__(self, upstream: str, delay: float):
        import threading

        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._threading.Thread(target=self._pipe, args=(client, server, self.delay), daemon=True).start()
            self._threading.Thread(target=self._pipe, args=(server, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


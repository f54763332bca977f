"""Real, throwaway database servers for tests: PostgreSQL 15 and Redis, and the
registry's database of either kind.

The registry's PostgreSQL backend is tested against the real thing, not SQLite or a
mock: locking, transactions, constraint errors and durability (fsync stays on) are
exactly what those tests check, and only a real server behaves like production.

`postgres_server()` makes a temporary directory, runs `initdb` into it, starts
`postgres` directly as a child process on a free port (its own session, so a Ctrl-C in
the test run does not reach it), waits until it accepts connections, creates the
`registry` database and yields its SQLAlchemy async URL. On exit the server is stopped
by its PID (SIGINT = fast shutdown; after a timeout SIGKILL to it and its children, by PID) and
the directory is removed, whether or not the body raised.

Why the `postgres` OS user: `initdb` and `postgres` refuse to run as root, and the
tests (and .ci/run on a clean clone) run as root. So when we are root, those two run
as `postgres` — the child is switched with setgid/setgroups/setuid by `subprocess`
itself (`user=`, `group=`, `extra_groups=`), equivalent to
`setpriv --reuid=postgres --regid=postgres --init-groups -- ...`. Unlike `runuser`/`su`,
that forks no intermediate process, so the PID we hold is the postmaster's own and the
signals we send reach it directly. As a non-root user, they run as that user. The
client tools (`pg_isready`, `createdb`) connect over TCP as the database role
`postgres` with trust auth, so they need no switch.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from support.polling import eventually
from support.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
DATABASE = "registry"
HOST = "127.0.0.1"


def _run_as() -> dict[str, Any]:
    """Popen keyword arguments that run a child as the `postgres` OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no {OS_USER!r} OS user to run initdb/postgres as "
            "(they refuse to run as root)"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(OS_USER, pw.pw_gid)}


def _env(home: Path) -> dict[str, str]:
    """A clean environment: C locale, and no PG* variables from the caller to redirect the tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C", "LANG": "C", "HOME": str(home)})
    return env


def _binary(name: str) -> str:
    path = PG_BIN / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"PostgreSQL 15 binary {path} not found or not executable; install postgresql-15")
    return str(path)


def _log_tail(log: Path, limit: int = 6000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError as e:
        return f"(no server log: {e})"


def _initdb(data: Path, home: Path) -> None:
    result = subprocess.run(
        [
            _binary("initdb"),
            "--pgdata", str(data),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",  # only initdb's own final fsync; the server runs with fsync on
        ],
        cwd=home, env=_env(home), capture_output=True, text=True, check=False, **_run_as(),
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed with exit code {result.returncode}:\n{result.stdout}{result.stderr}")


def _start(data: Path, home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                _binary("postgres"),
                "-D", str(data),
                "-p", str(port),
                "-k", str(home),  # Unix socket directory: ours, not /var/run/postgresql
                "-c", f"listen_addresses={HOST}",
            ],
            cwd=home, env=_env(home), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, **_run_as(),
        )  # fmt: skip


def _wait_ready(server: subprocess.Popen[bytes], port: int, home: Path, log: Path, timeout: float) -> None:
    isready = [_binary("pg_isready"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-t", "1"]
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"postgres (pid {server.pid}) exited with code {server.returncode} before accepting connections "
                f"on {HOST}:{port}; server log:\n{_log_tail(log)}"
            )
        result = subprocess.run(isready, env=_env(home), capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"postgres (pid {server.pid}) not accepting connections on {HOST}:{port} after {timeout:.0f}s "
                f"(pg_isready: {result.stdout.strip()}); server log:\n{_log_tail(log)}"
            )
        time.sleep(0.05)


def _createdb(port: int, home: Path, log: Path) -> None:
    result = subprocess.run(
        [_binary("createdb"), "-h", HOST, "-p", str(port), "-U", "postgres", "--maintenance-db", "postgres", DATABASE],
        env=_env(home), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"createdb {DATABASE} failed: {result.stderr.strip()}; server log:\n{_log_tail(log)}")


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, from /proc (field 4 of /proc/PID/stat, after the parenthesised name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _stop(server: subprocess.Popen[bytes], timeout: float) -> None:
    """Fast shutdown by PID (SIGINT: backends are terminated, WAL flushed, then the postmaster exits).
    After `timeout`, SIGKILL the postmaster and, by PID, its children: each PostgreSQL child makes
    itself its own process-group leader, so killing the postmaster's group would not reach them."""
    if server.poll() is not None:
        return
    try:
        os.kill(server.pid, signal.SIGINT)
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        children = _children(server.pid)
        server.kill()
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait()


@contextmanager
def postgres_server(ready_timeout: float = 30.0, stop_timeout: float = 30.0) -> Iterator[str]:
    """Run a fresh PostgreSQL 15 server with an empty `registry` database; yield its URL,
    `postgresql+asyncpg://postgres@127.0.0.1:PORT/registry`. Stopped and deleted on exit."""
    for name in ("initdb", "postgres", "pg_isready", "createdb"):
        _binary(name)
    run_as = _run_as()
    # /tmp (not $TMPDIR, which may be a root-only directory) so `postgres` can reach it,
    # and short, because the Unix socket path inside it must fit in 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
    server: subprocess.Popen[bytes] | None = None
    try:
        if run_as:
            os.chown(home, run_as["user"], run_as["group"])
        data, log = home / "data", home / "server.log"
        _initdb(data, home)
        port = free_port()
        server = _start(data, home, port, log)
        _wait_ready(server, port, home, log, ready_timeout)
        _createdb(port, home, log)
        yield f"postgresql+asyncpg://postgres@{HOST}:{port}/{DATABASE}"
    finally:
        try:
            if server is not None:
                _stop(server, stop_timeout)
        finally:
            shutil.rmtree(home, ignore_errors=True)


# The registry runs on both; its tests are parametrized over them.
DATABASES = ["sqlite", "postgresql"]


@contextmanager
def database(kind: str) -> Iterator[tuple[str, Path]]:
    """(REGISTRY_DATABASE_URL, data directory) for a fresh registry database of `kind`:
    "" for SQLite in the directory, or a PostgreSQL server of its own."""
    with tempfile.TemporaryDirectory(prefix="registry-") as data_dir:
        if kind == "sqlite":
            yield "", Path(data_dir)
        else:
            with postgres_server() as url:
                yield url, Path(data_dir)


@contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server (Debian's package, installed by `make test`) as a child of the
    test process: its own port, no persistence, stopped by its PID. Yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; `make test` installs Debian's redis-server package")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server did not start (exit code {process.poll()})")
            return redis.Redis.from_url(url).ping()

        eventually(
            answers, timeout=10, interval=0.05, what="redis-server answering PING", ignoring=redis.ConnectionError
        )
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

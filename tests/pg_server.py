"""A real, throwaway PostgreSQL server for the tests, from the binaries installed on the machine.

One server per pytest(-xdist) worker: its own temporary directory (data and unix socket), its own
loopback port, durability switched off (the data dies with the test run). initdb and postgres
refuse to run as root, so under root (here and in CI) they run as the ``postgres`` system user.

The server must not outlive the process that started it: ``stop()`` runs from the session
fixture's teardown and from ``atexit``; if the worker is killed outright, the postmaster gets
SIGINT (fast shutdown) from the kernel through ``setpriv --pdeathsig``, and the next start sweeps
the directories such dead owners left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg

from tests.loopback import free_port

#: Environment variable naming the directory holding ``initdb`` and ``postgres`` (overrides the search).
PG_BIN_ENV = "PG_BIN"
#: Where Debian/Ubuntu's ``postgresql-<ver>`` packages put the server binaries.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
#: The system user the server runs as when the tests run as root.
SERVER_USER = "postgres"
#: Prefix of each server's temporary directory (the sweep of dead owners' leftovers matches it).
DIR_PREFIX = "concierge-pg-"
#: Preferred parent of that directory: on a loaded disk a CREATE DATABASE takes 0.3-0.9 s even with
#: fsync off, on tmpfs 15-40 ms (and a start 0.7 s instead of 3-4 s).
SHM_ROOT = Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; "
    "other systems: any PostgreSQL >= 13 with initdb and postgres), "
    f"or point {PG_BIN_ENV} at the directory holding initdb and postgres"
)

#: Speed over durability: the data is thrown away with the server.
THROWAWAY_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "logging_collector": "off",
}

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_START_ATTEMPTS = 5  # only a lost race for the port is retried, with a new port


class PostgresUnavailable(RuntimeError):
    """The machine cannot run a PostgreSQL server: binaries (or the user to run them as) missing."""


def missing_server_outcome(environ: Mapping[str, str]) -> Literal["skip", "fail"]:
    """Whether tests needing PostgreSQL skip or fail when no server can be started.

    A developer's machine without PostgreSQL skips them with the reason; CI (``CI`` set to a true
    value, as every CI service does) must never silently skip them, so there it is a failure.

    Args:
        environ: The process environment (``os.environ``).

    Returns:
        ``"fail"`` in CI, ``"skip"`` elsewhere.
    """
    return "fail" if environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"} else "skip"


def find_pg_bin(environ: Mapping[str, str] | None = None) -> Path:
    """The directory with the server binaries: ``PG_BIN``, else the highest Debian version, else PATH.

    Raises:
        PostgresUnavailable: Nothing usable was found; the message says where it looked.
    """
    env = os.environ if environ is None else environ
    if override := env.get(PG_BIN_ENV):
        path = Path(override)
        if _has_server(path):
            return path
        raise PostgresUnavailable(f"{PG_BIN_ENV}={override} holds no initdb and postgres; {INSTALL_HINT}")
    versions = []
    if DEBIAN_PG_ROOT.is_dir():
        for child in DEBIAN_PG_ROOT.iterdir():
            if re.fullmatch(r"\d+(\.\d+)?", child.name) and _has_server(child / "bin"):
                versions.append((tuple(int(p) for p in child.name.split(".")), child / "bin"))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("initdb", path=env.get("PATH"))
    if on_path and _has_server(Path(on_path).parent):
        return Path(on_path).parent
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries: looked in ${PG_BIN_ENV}, {DEBIAN_PG_ROOT}/<version>/bin "
        f"and PATH for initdb and postgres; {INSTALL_HINT}"
    )


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "postgres"))


@dataclass(frozen=True)
class _RunAs:
    """How to launch the server binaries: as ourselves, or (under root) as the ``postgres`` user."""

    uid: int
    gid: int
    #: Command prefix: setpriv for a user switch and a parent-death signal, when available.
    setpriv: str | None

    @classmethod
    def for_this_process(cls) -> _RunAs:
        setpriv = shutil.which("setpriv")
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), setpriv)
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SERVER_USER!r} user to run initdb/postgres as "
                f"(they refuse root); {INSTALL_HINT} (the package creates the user)"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid, setpriv)

    def command(self, argv: Sequence[str], *, die_with_parent: bool = False) -> list[str]:
        """``argv`` prefixed so it runs as this user (and dies with us, if asked and possible)."""
        if self.setpriv is None:
            return list(argv)
        prefix = [self.setpriv]
        # The kernel sends it when the *thread* that forked exits: only the main thread lives as
        # long as the process.
        if die_with_parent and threading.current_thread() is threading.main_thread():
            prefix += ["--pdeathsig", "INT"]  # SIGINT = fast shutdown
        if self.uid != os.geteuid():
            prefix += [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return [*prefix, "--", *argv] if len(prefix) > 1 else list(argv)

    def popen_kwargs(self) -> dict[str, object]:
        """Without setpriv, let subprocess switch the user (there is then no parent-death signal)."""
        if self.setpriv is None and self.uid != os.geteuid():
            return {"user": self.uid, "group": self.gid, "extra_groups": []}
        return {}


def _server_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, PGHOST…) must not steer the throwaway server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_root() -> Path:
    """Where server directories go: tmpfs (``/dev/shm``) when there is room, else the temp dir."""
    with contextlib.suppress(OSError):
        if os.access(SHM_ROOT, os.W_OK) and shutil.disk_usage(SHM_ROOT).free >= _SHM_MIN_FREE:
            return SHM_ROOT
    return Path(tempfile.gettempdir())


def _postmaster_running(pid_file: Path) -> bool:
    try:
        return _pid_alive(int(pid_file.read_text().split("\n", 1)[0]))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable or half-written: leave it alone


def sweep_stale_dirs(tmp_root: Path | None = None) -> list[Path]:
    """Delete the directories of servers whose owning process died without stopping them.

    Only directories whose owner is gone and whose postmaster is not running are removed, so a
    running server of a live worker is never touched.

    Returns:
        The directories removed.
    """
    root = tmp_root or scratch_root()
    removed = []
    for path in root.glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner) or _postmaster_running(path / "data" / "postmaster.pid"):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@dataclass
class PostgresServer:
    """One running throwaway server; build it with :meth:`start`, end it with :meth:`stop`."""

    bin_dir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    #: Seconds the start took (initdb + postmaster ready).
    started_in: float
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        *,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """initdb a fresh cluster in a temporary directory and start a postmaster on loopback.

        Args:
            bin_dir: Directory of the server binaries (default :func:`find_pg_bin`).
            settings: Extra ``postgresql.conf`` settings (``max_connections`` for a big test…).
            timeout: Deadline in seconds for initdb and for the server to become ready.

        Raises:
            PostgresUnavailable: No binaries, or no user to run them as.
            RuntimeError: initdb or the server failed; the message carries their output.
        """
        began = time.monotonic()
        bin_dir = bin_dir or find_pg_bin()
        run_as = _RunAs.for_this_process()
        sweep_stale_dirs()
        root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=scratch_root()))
        try:
            (root / "owner.pid").write_text(str(os.getpid()))
            os.chown(root, run_as.uid, run_as.gid)
            _initdb(bin_dir, root, run_as, timeout)
            conf = {**THROWAWAY_SETTINGS, **(settings or {})}
            for _ in range(_START_ATTEMPTS):
                port = free_port()
                process = _launch(bin_dir, root, port, conf, run_as)
                if _wait_ready(process, root, began + timeout):
                    server = cls(bin_dir, root, port, process, time.monotonic() - began)
                    atexit.register(server.stop)
                    return server
            raise RuntimeError(f"PostgreSQL lost the race for a free port {_START_ATTEMPTS} times")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of one database on this server (superuser ``postgres``, trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    async def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database and return its URL.

        Args:
            name: Database name (lower-case identifier); default a unique one.
        """
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        await self._admin(f'CREATE DATABASE "{_checked(name)}"')
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        """Drop a database, cutting off connections a test left open (its disk space comes back)."""
        await self._admin(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url(), timeout=30)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (open sessions are cut) and delete the directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.send_signal(signal.SIGQUIT)  # immediate shutdown
                    self.process.wait(timeout)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _checked(name: str) -> str:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} is not a plain lower-case identifier")
    return name


def _initdb(bin_dir: Path, root: Path, run_as: _RunAs, timeout: float) -> None:
    argv = [
        str(bin_dir / "initdb"), "-D", str(root / "data"), "--auth=trust", "--locale=C", "-E", "UTF8",
        "-U", "postgres", "--no-sync",
    ]  # fmt: skip
    done = subprocess.run(
        run_as.command(argv), env=_server_env(), cwd=root, capture_output=True, timeout=timeout,
        check=False, **run_as.popen_kwargs(),
    )  # fmt: skip
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{output}")


def _launch(
    bin_dir: Path, root: Path, port: int, conf: Mapping[str, str], run_as: _RunAs
) -> subprocess.Popen[bytes]:
    argv = [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]  # fmt: skip
    for key, value in conf.items():
        argv += ["-c", f"{key}={value}"]
    with open(root / "server.log", "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            run_as.command(argv, die_with_parent=True), env=_server_env(), cwd=root,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **run_as.popen_kwargs(),
        )  # fmt: skip


def _wait_ready(process: subprocess.Popen[bytes], root: Path, deadline: float) -> bool:
    """Wait until the postmaster reports ``ready`` in postmaster.pid (what ``pg_ctl -w`` waits on).

    Returns:
        True when ready; False when the server exited because the port was taken (retry).

    Raises:
        RuntimeError: The server exited for another reason or missed the deadline.
    """
    pid_file = root / "data" / "postmaster.pid"
    while True:
        with contextlib.suppress(FileNotFoundError):
            lines = pid_file.read_text().splitlines()
            # Line 8 is the postmaster status; line 1 guards against a stale file of another pid.
            if len(lines) >= 8 and lines[0].strip() == str(process.pid) and lines[7].strip() == "ready":
                return True
        try:
            code = process.wait(timeout=0.02)  # doubles as the poll interval
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"PostgreSQL was not ready in time:\n{_log(root)}") from None
            continue
        log = _log(root)
        if "could not bind" in log or "Address already in use" in log:
            (root / "server.log").unlink(missing_ok=True)
            return False
        raise RuntimeError(f"PostgreSQL exited with {code} before it was ready:\n{log}")


def _log(root: Path) -> str:
    try:
        return (root / "server.log").read_text(errors="replace")[-4000:]
    except OSError:
        return "(no server log)"

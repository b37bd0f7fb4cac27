"""A throwaway PostgreSQL server for tests (a helper module, not a test file).

    with postgres_server() as url:      # "postgresql://postgres@127.0.0.1:PORT/jisr"
        engine = sa.create_engine(url)

The server is Debian's (``apt-get install postgresql``: /usr/lib/postgresql/<version>/bin),
initialised in a fresh temporary folder, listening on a free loopback port (and a Unix socket
inside that folder, never /var/run/postgresql), with "trust" authentication, fsync off; it is
stopped and its folder removed on exit. The Debian service and its cluster are not used.

PostgreSQL refuses to run as root: under root the server programs run as the ``postgres``
system user (created by the Debian package) through ``runuser``, and the folder is given to
that user; otherwise they run as the current user.

Missing binaries raise PostgresUnavailable: a test that needs PostgreSQL fails, it is not skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

SERVER_USER = "postgres"           # the database superuser, and the system user under root
DATABASE = "jisr"
INSTALL_HINT = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server programs cannot be found or cannot be run."""


def find_bindir() -> Path:
    """The folder of initdb and pg_ctl: $JISR_PG_BINDIR, else Debian's newest version, else $PATH."""
    candidates: list[Path] = []
    if os.environ.get("JISR_PG_BINDIR"):
        candidates.append(Path(os.environ["JISR_PG_BINDIR"]))

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name)) or (0,)

    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin, "
        f"$JISR_PG_BINDIR or $PATH; install them with: {INSTALL_HINT}"
    )


def new_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the throwaway server of ``server_url``; its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, future=True, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Runner:
    """Runs the server programs as the right user: `postgres` under root, else the current one."""

    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        self.prefix: list[str] = []
        self.uid = os.geteuid()
        self.gid = os.getegid()
        if self.as_root:
            try:
                entry = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and PostgreSQL refuses to: there is no {SERVER_USER!r} system user to run it as "
                    f"(the Debian package creates it: {INSTALL_HINT})"
                ) from None
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
            if not runuser:
                raise PostgresUnavailable(f"running as root, and `runuser` (util-linux) is missing to run PostgreSQL as {SERVER_USER!r}")
            self.prefix = [runuser, "-u", SERVER_USER, "--"]
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def run(self, args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        # cwd: the server's own folder, which its user can enter (root's home may not be).
        # LC_ALL=C: locale-independent messages and cluster; PG* variables must not redirect anything.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run([*self.prefix, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check(result: subprocess.CompletedProcess, what: str, log: Optional[Path] = None) -> None:
    if result.returncode == 0:
        return
    detail = (result.stdout + result.stderr).strip()
    if log is not None and log.exists():
        detail += "\n--- server log (end) ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise PostgresUnavailable(f"{what} failed (exit {result.returncode}): {detail}")


def _temp_root(runner: _Runner) -> str:
    """A folder for the server's temporary folder that the server's user can reach."""
    base = tempfile.gettempdir()
    if runner.as_root and runner.run(["test", "-x", base], cwd=Path("/")).returncode != 0:
        return "/tmp"
    return base


@contextlib.contextmanager
def postgres_server(database: str = DATABASE, timezone: str = "UTC", start_timeout: float = 60) -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yield the URL of its (new, empty) database ``database``.

    ``timezone`` is the server's TimeZone setting, in which it shows (and reads naive) timestamps.
    """
    bindir = find_bindir()
    runner = _Runner()
    # A short path: a Unix socket path is limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="jisr-pg-", dir=_temp_root(runner)))
    data, log = root / "data", root / "server.log"
    started = False
    try:
        if runner.as_root:
            os.chown(root, runner.uid, runner.gid)
        _check(
            runner.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", SERVER_USER, "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
                cwd=root,
            ),
            "initdb",
        )
        for attempt in range(5):
            port = free_port()
            with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
                # Later lines win: a retry's port replaces the previous one.
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    f"timezone = '{timezone}'\nlog_timezone = 'UTC'\nmax_connections = 50\n"
                )
            if runner.as_root:
                os.chown(data / "postgresql.auto.conf", runner.uid, runner.gid)
            result = runner.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(start_timeout)), "start"],
                cwd=root,
                timeout=start_timeout + 30,
            )
            started = result.returncode == 0 or (data / "postmaster.pid").exists()
            if result.returncode == 0:
                break
            in_use = log.exists() and "could not bind" in log.read_text(errors="replace")
            if not in_use or attempt == 4:
                _check(result, "pg_ctl start", log)
            _stop(runner, bindir, data, root)  # whatever half-started, before trying another port
            started = False
        createdb = bindir / "createdb"
        _check(
            runner.run([str(createdb), "-h", "127.0.0.1", "-p", str(port), "-U", SERVER_USER, database], cwd=root),
            f"createdb {database}",
            log,
        )
        yield f"postgresql://{SERVER_USER}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            _stop(runner, bindir, data, root)
        shutil.rmtree(root, ignore_errors=True)


def _stop(runner: _Runner, bindir: Path, data: Path, root: Path) -> None:
    """Stop the server ("fast": clients are disconnected); kill its postmaster if that fails."""
    pid_file = data / "postmaster.pid"
    try:
        result = runner.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], cwd=root, timeout=60)
        if result.returncode == 0 or not pid_file.exists():
            return
    except subprocess.TimeoutExpired:
        pass
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 9)  # the postmaster this module started (its children exit with it)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
    except (OSError, ValueError, IndexError):
        pass

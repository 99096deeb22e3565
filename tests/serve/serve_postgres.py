"""A throwaway PostgreSQL cluster for the gateway's tests, on a loopback port.

`pg_admin_url()` gives the URL of a server to create test databases in: the one named by
`POLYDISTILL_TEST_PG_URL` (an existing server), else a cluster this module starts from Debian's
binaries (`/usr/lib/postgresql/*/bin`) in a temporary directory, running as the
`postgres` user when the tests run as root (PostgreSQL refuses root), stopped at exit.
"""

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_URL_ENV = "POLYDISTILL_TEST_PG_URL"


def postgres_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_user(user: str | None, command: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *command] if user else command


def start_cluster(bindir: Path) -> str:
    """initdb + pg_ctl start in a fresh directory; returns the admin URL."""
    user = None
    base = Path(tempfile.mkdtemp(prefix="polydistill-pg-"))
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    data, port = base / "data", _free_port()
    run = lambda cmd: subprocess.run(  # noqa: E731
        _as_user(user, cmd), check=True, capture_output=True, text=True, cwd=base
    )
    run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync"])  # fmt: skip
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
         "-w", "start"])  # fmt: skip

    def stop() -> None:
        subprocess.run(
            _as_user(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            cwd=base,
        )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_started: list[str] = []


def pg_admin_url() -> str | None:
    """The admin URL of a PostgreSQL server for tests, or None if none can be had."""
    if os.environ.get(PG_URL_ENV):
        return os.environ[PG_URL_ENV]
    if not _started:
        bindir = postgres_bindir()
        if bindir is None:
            return None
        _started.append(start_cluster(bindir))
    return _started[0]


def create_database(admin_url: str) -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

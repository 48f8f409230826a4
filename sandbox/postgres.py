"""A throwaway PostgreSQL cluster (Debian `postgresql`) on 127.0.0.1, for running Prefect's server on PostgreSQL.

`PostgresServer` runs `initdb` in a temporary directory (trust authentication: a test cluster listening on
127.0.0.1 only), starts `postgres -h 127.0.0.1 -p <free port>` with its Unix socket in that directory,
creates the database and exposes `.url` (`postgresql+asyncpg://postgres@127.0.0.1:<port>/prefect`, the form
`PREFECT_SERVER_DATABASE_CONNECTION_URL` takes). On exit it stops the server (`pg_ctl stop -m fast`) and
removes the directory.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system user (created by the
Debian package) and its commands run as that user; as anyone else, they run as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sandbox.process import LocalServer, free_port

POSTGRES_USER = "postgres"  # the OS user owning the cluster when we run as root, and the database superuser
_COMMANDS = ("initdb", "postgres", "pg_ctl", "pg_isready", "createdb")
_INSTALL_HINT = "install the Debian package `postgresql` (apt-get install postgresql)"


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL is not installed, or the test cluster could not be created or started."""


def find_bindir() -> Path:
    """The directory of `initdb`, `postgres` and `pg_ctl`: the newest /usr/lib/postgresql/*/bin, or pg_config's."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    pg_config = shutil.which("pg_config")
    if pg_config:
        answer = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if answer.returncode == 0 and answer.stdout.strip():
            candidates.append(Path(answer.stdout.strip()))
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _COMMANDS):
            return bindir
    raise PostgresUnavailableError(
        f"PostgreSQL server binaries ({', '.join(_COMMANDS)}) not found in /usr/lib/postgresql/*/bin "
        f"nor in `pg_config --bindir`: {_INSTALL_HINT}"
    )


class PostgresServer(LocalServer):
    """A PostgreSQL server on 127.0.0.1 with one database, for as long as the context lasts."""

    _error = PostgresUnavailableError
    _name = "postgres"
    _title = "the PostgreSQL server"
    _tmp_prefix = "runbook-postgres-"
    _log_name = "postgres.log"
    _log_limit = 1500
    _log_keeps_head = False
    _exited = "{name} exited at start (code {code})"
    _stop_timeout = 20.0  # after `pg_ctl stop`
    _kill_timeout = 10.0

    def __init__(self, *, database: str = "prefect", port: int | None = None, timeout: float = 60) -> None:
        super().__init__(startup_timeout=timeout)
        self.database = database
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.timeout = timeout
        self.bindir = find_bindir()
        self._owner: pwd.struct_passwd | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The `postgres` process while the server runs."""
        return self._process

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect (asyncpg driver)."""
        return f"postgresql+asyncpg://{POSTGRES_USER}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL of the same database (for psql or `asyncpg.connect`)."""
        return f"postgresql://{POSTGRES_USER}@{self.host}:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / self._log_name

    def _preflight(self) -> None:
        self._owner = self._cluster_owner()

    def _start(self) -> None:
        socket_dir = self.root / "socket"
        socket_dir.mkdir()
        if self._owner is not None:
            for path in (self.root, socket_dir):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "--username", POSTGRES_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        command = [
            str(self.bindir / "postgres"), "-D", str(self.data_dir), "-k", str(socket_dir),
            "-h", self.host, "-p", str(self.port),  # TCP on 127.0.0.1 only
            # A test cluster: durability is not needed, speed is.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        self._spawn(command, **self._as_owner())
        self._wait_until(self._accepts_connections, self.timeout, "did not accept connections", interval=0.1)
        self._run(
            "createdb", "-h", self.host, "-p", str(self.port), "-U", POSTGRES_USER, self.database
        )  # fmt: skip

    def _stop_process(self) -> None:
        """Stop the server with a fast shutdown (`pg_ctl stop -m fast`), then wait for its process."""
        if self._process is not None and self._process.poll() is None:
            self._call([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"], 30)
        super()._stop_process()

    def _cluster_owner(self) -> pwd.struct_passwd | None:
        """As root, the `postgres` user (PostgreSQL refuses root); otherwise None: run as ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            raise PostgresUnavailableError(
                f"running as root, and there is no `{POSTGRES_USER}` user to own the test cluster "
                f"(PostgreSQL refuses to run as root): {_INSTALL_HINT}, which creates it"
            ) from None

    def _as_owner(self) -> dict[str, Any]:
        """Popen arguments for a command as the cluster owner (its uid and gid, no supplementary groups), in root."""
        owner = self._owner
        return {
            "env": self._env(), "cwd": self.root,
            "user": owner.pw_uid if owner else None, "group": owner.pw_gid if owner else None,
            "extra_groups": [] if owner else None,
        }  # fmt: skip

    def _call(self, args: list[str], timeout: float) -> tuple[int, str]:
        """Run a command as the cluster owner; its exit code and output."""
        with subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as_owner()
        ) as proc:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                return -1, f"timed out after {timeout:.0f} s: " + out.decode(errors="replace")
            return proc.returncode, out.decode(errors="replace")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._owner is not None:
            env["HOME"] = str(self.root)
            env["USER"] = env["LOGNAME"] = self._owner.pw_name
        return env

    def _run(self, command: str, *args: str) -> None:
        code, output = self._call([str(self.bindir / command), *args], self.timeout)
        if code != 0:
            raise PostgresUnavailableError(f"`{command}` failed (exit {code}): {output.strip()[-1500:]}")

    def _accepts_connections(self) -> bool:
        code, _ = self._call(
            [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", POSTGRES_USER], 10
        )
        return code == 0

"""The lifecycle shared by the sandbox's local servers (registry, Prometheus, Alertmanager, dockerd, PostgreSQL).

`LocalServer` owns a temporary directory (`root`), one child process whose stdout and stderr go to a log file in
that directory, and the steps around them: `start()` checks the prerequisites, creates the directory and calls
the subclass's `_start()`, and on any failure stops again; `_spawn()` starts the child; `_wait_until()` waits
for a readiness check and fails fast, with the log's tail, if the child exits meanwhile; `stop()` terminates
the child (kill after a timeout) and removes the directory. Errors are raised as the subclass's `_error` class.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, NoReturn, Self

import httpx

from runbook.processes import stop_process


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer:
    """One server process of the sandbox with its own temporary directory, for as long as the context lasts."""

    _error: ClassVar[type[RuntimeError]] = RuntimeError
    _name: ClassVar[str] = "server"  # the program, as error messages name it
    _title: ClassVar[str] = "the server"  # as in "<title> is not running"
    _tmp_prefix: ClassVar[str] = "runbook-"
    _log_name: ClassVar[str] = "server.log"
    _log_limit: ClassVar[int] = 2000  # characters of the log an error message quotes
    _log_full_limit: ClassVar[int] = 20000  # characters `log()` returns
    _log_keeps_head: ClassVar[bool] = True  # a Go panic puts the reason first and a long stack after it
    _exited: ClassVar[str] = "{name} exited with code {code} on start"
    _stop_timeout: ClassVar[float] = 5.0  # seconds from SIGTERM to SIGKILL
    _kill_timeout: ClassVar[float] = 5.0

    def __init__(self, *, startup_timeout: float) -> None:
        self._startup_timeout = startup_timeout
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def root(self) -> Path:
        """The temporary directory of this server (configuration, data, log)."""
        if self._tmp is None:
            raise self._error(f"{self._title} is not running: use it as a context manager")
        return self._tmp

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Check the prerequisites, create the temporary directory and start the server; stop again on failure."""
        self._preflight()
        self._tmp = self._make_root()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and remove its temporary directory; safe to call twice."""
        self._stop_process()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def log(self) -> str:
        """What the server wrote to stdout/stderr so far (handy when a test fails)."""
        return self._log_tail(limit=self._log_full_limit)

    # --- for subclasses -------------------------------------------------------------------------------

    def _preflight(self) -> None:
        """Raise before anything is created if the server cannot run here."""

    def _make_root(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=self._tmp_prefix))

    def _start(self) -> None:
        """Start the process (`_spawn`) in `root` and wait until it serves (`_wait_until`)."""
        raise NotImplementedError

    def _require(self, executable: str, package: str) -> None:
        if not Path(executable).exists():
            raise self._error(f"{executable} is missing: apt-get install {package}")

    def _spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        """Start the server process, stdin from /dev/null, stdout and stderr to `root / log_name`."""
        self._log = open(self.root / self._log_name, "w+b")  # noqa: SIM115 - closed in _stop_process()
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=self.root if cwd is None else cwd,
            **popen_kwargs,
        )
        return self._process

    def _wait_until(self, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll `check` until it is true; raise, with the log's tail, if the process exits or `timeout` passes.

        `what` completes the timeout message: "<name> <what> within <timeout> s: <log>".
        """
        process = self._process
        assert process is not None, "_spawn() first"
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                self._fail(self._exited.format(name=self._name, code=code))
            if check():
                return
            if time.monotonic() > deadline:
                self._fail(f"{self._name} {what} within {timeout:.0f} s")
            time.sleep(interval)

    def _wait_for_http(self, url: str, what: str, *, any_status: bool = False) -> None:
        """`_wait_until` GET `url` answers 200 (with `any_status`: answers at all), within the startup timeout."""
        with httpx.Client(timeout=1.0) as client:

            def answers() -> bool:
                try:
                    response = client.get(url)
                except httpx.TransportError:
                    return False
                return any_status or response.status_code == 200

            self._wait_until(answers, self._startup_timeout, what)

    def _fail(self, message: str) -> NoReturn:
        log = self._log_tail()
        self._stop_process()
        raise self._error(f"{message}: {log}")

    def _log_tail(self, limit: int | None = None) -> str:
        """The log so far, at most `limit` characters (its head and tail, or its tail only)."""
        if self._log is None:
            return "(no log)"
        limit = self._log_limit if limit is None else limit
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        if len(text) > limit:
            text = f"{text[: limit // 2]}\n...\n{text[-limit // 2 :]}" if self._log_keeps_head else text[-limit:]
        return text or "(empty log)"

    def _stop_process(self) -> None:
        """Terminate the process (kill it after `_stop_timeout`) and close its log."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._stop_timeout, self._kill_timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _start_on_free_port(self, start_once: Callable[[int], None], attempts: int = 3) -> None:
        """`start_once(port)` on a free port, again on another if that one was taken meanwhile."""
        last_error = ""
        for _ in range(attempts):  # another process may take the free port between probe and bind
            try:
                start_once(free_port())
                return
            except self._error as exc:
                last_error = str(exc)
                if "address already in use" not in last_error:
                    raise
        raise self._error(last_error)

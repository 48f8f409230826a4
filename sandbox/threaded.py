"""The lifecycle shared by the sandbox's in-thread servers (GitHub and Slack stand-ins, the app, the metrics app).

`ThreadedServer` serves from a daemon thread of this process, on 127.0.0.1 and a port the OS picks when it
starts: `start()` binds (`_bind`), runs `_serve` in the thread (in a copy of the caller's context: Prefect's
settings live in context variables) and waits until `_ready`, failing fast if the thread ends meanwhile;
`stop()` asks the server to end (`_shutdown`), joins the thread and closes the socket (`_close`). Both are
safe to call twice, `stop()` also before any start; as a context manager it does both. A stopped server can
start again, on a new port. `ThreadedHTTPServer` fills the steps in for a `http.server` handler.

As `LocalServer` (sandbox/process.py) does for the servers that run in their own process.
"""

from __future__ import annotations

import contextvars
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import ClassVar, Self

HOST = "127.0.0.1"


class ThreadedServer:
    """One server on 127.0.0.1 served from a thread of this process, for as long as the context lasts."""

    _thread_name: ClassVar[str] = "threaded-server"
    _ready_timeout: ClassVar[float] = 15.0  # seconds from the thread's start until the server must serve
    _join_timeout: ClassVar[float] = 5.0  # seconds to wait for the thread once asked to stop

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def running(self) -> bool:
        return self._port is not None

    @property
    def port(self) -> int:
        """The port it listens on; RuntimeError unless started."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`; RuntimeError unless started."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        """Bind, serve from a new thread and wait until it serves; returns self (and does nothing if running)."""
        if self._port is not None:
            return self
        try:
            self._port = self._bind()
            context = contextvars.copy_context()
            thread = threading.Thread(target=context.run, args=(self._serve,), name=self._thread_name, daemon=True)
            self._thread = thread
            thread.start()
            self._wait_ready(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving, wait for the thread and close the listening socket; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._shutdown()
            thread.join(timeout=self._join_timeout)
        if self._port is not None:
            self._close()
            self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_ready(self, thread: threading.Thread) -> None:
        deadline = time.monotonic() + self._ready_timeout
        while not self._ready():
            if not thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} stopped before serving (see the thread's traceback)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not serve within {self._ready_timeout:g} s")
            time.sleep(0.01)

    # --- for subclasses -------------------------------------------------------------------------------

    def _bind(self) -> int:
        """Listen on 127.0.0.1 and a port the OS picks; return the port."""
        raise NotImplementedError

    def _serve(self) -> None:
        """Serve until `_shutdown()` (runs in the server's thread)."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether it serves by now (polled after the thread started)."""
        return True

    def _shutdown(self) -> None:
        """Make `_serve()` return (called from another thread)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the socket (after `_serve()` returned, or when it never ran)."""
        raise NotImplementedError


class ThreadedHTTPServer(ThreadedServer):
    """A `http.server` request handler served by a ThreadingHTTPServer (a thread per request) from a thread.

    Subclasses give the handler (`_handler_class`), or the whole server (`_make_server`). The server listens once
    bound, so it is ready as soon as its thread runs.
    """

    _poll_interval: ClassVar[float] = 0.05  # how often serve_forever() looks for a shutdown: stop() takes that long

    def __init__(self) -> None:
        super().__init__()
        self._httpd: ThreadingHTTPServer | None = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _make_server(self) -> ThreadingHTTPServer:
        """The server, bound to 127.0.0.1 and a free port (not serving yet)."""
        server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        server.daemon_threads = True  # a request still answered does not hold up the process
        return server

    def _bind(self) -> int:
        self._httpd = self._make_server()
        return int(self._httpd.server_address[1])

    def _serve(self) -> None:
        assert self._httpd is not None, "_bind() first"
        self._httpd.serve_forever(poll_interval=self._poll_interval)

    def _shutdown(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()

    def _close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.server_close()

"""Run the sandbox under uvicorn: in a background thread for tests, or blocking for the CLI."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import uvicorn

from importer.sandbox._app import create_app, sandbox_state
from importer.sandbox._config import SandboxConfig
from importer.sandbox._state import SandboxState

T = TypeVar("T")

#: Seconds to wait for the server to come up or to stop before giving up.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
# After this, uvicorn cancels requests still running at shutdown (a backstop: slow
# answers are woken at once, see _Server.shutdown).
GRACEFUL_SHUTDOWN_S = 3
BACKLOG = 2048  # uvicorn's default


class _Server(uvicorn.Server):
    """uvicorn's server, with a shutdown that never waits out a slow answer."""

    def __init__(self, config: uvicorn.Config, state: SandboxState) -> None:
        super().__init__(config)
        self._state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._state.begin_shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the captured signal after shutdown, which turns Ctrl-C into a
        # KeyboardInterrupt traceback and SIGTERM into death by signal; a stopped sandbox
        # is a normal end, so only catch the signals and let serve() return.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _uvicorn_config(app: Any, **options: Any) -> uvicorn.Config:
    # ws="none": the sandbox speaks plain HTTP, and importing a websockets library only
    # risks deprecation warnings. lifespan="off": the app needs no startup work.
    # proxy_headers=False: nothing sits in front of a loopback sandbox.
    return uvicorn.Config(
        app,
        ws="none",
        lifespan="off",
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **options,
    )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so the real port is known before the server starts (port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # is IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now, not when uvicorn starts, means a client that read the URL can
        # connect at once: the kernel queues it until the server accepts.
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningSandbox:
    """A sandbox served by uvicorn on its own event loop in a background thread.

    Use `running_sandbox()` rather than building one. The inspection methods run on
    the server's loop, so they are safe to call from any thread, sync or async code;
    after the sandbox stopped they read the final state directly.
    """

    def __init__(self, config: SandboxConfig | None, host: str, port: int) -> None:
        self.app = create_app(config)
        self._state = sandbox_state(self.app)
        self._sock = _bind(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.base_url = _url(host, self.port)
        self._uvicorn = _uvicorn_config(self.app, log_config=None, access_log=False)
        self._server = _Server(self._uvicorn, self._state)
        self._thread = threading.Thread(target=self._run, name=f"sandbox-{self.port}", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise RuntimeError(f"the sandbox failed to start: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving: slow answers are cut short, open connections closed."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise RuntimeError(f"the sandbox on {self.base_url} did not stop")
        self._sock.close()
        if self._error is not None:
            raise RuntimeError(
                f"the sandbox failed while serving: {self._error!r}"
            ) from self._error

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self._uvicorn.get_loop_factory()) as runner:
                self._loop = runner.get_loop()
                runner.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported to the caller by start/stop
            self._error = exc

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop, where all state changes happen."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=STOP_TIMEOUT_S)

    # --- inspection and control ------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The config in force now."""
        return self._state.config

    def stats(self) -> dict[str, Any]:
        """The same counters as `GET /__sandbox/stats`."""
        return self._on_loop(self._state.stats)

    def consents(self) -> list[dict[str, Any]]:
        """Every stored consent in creation order (a copy)."""
        return self._on_loop(lambda: copy.deepcopy(self._state.store.all()))

    def edit_consent(self, consent_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Change a stored consent behind the API's back, as `PATCH
        /__sandbox/consents/{id}` does (a None value removes a field); None if no such id."""
        return self._on_loop(lambda: copy.deepcopy(self._state.store.patch(consent_id, changes)))

    def requests(self) -> list[dict[str, Any]]:
        """The request log of `GET /__sandbox/requests`: t, method, path, status.

        Entries are in the order requests finished; `t` is when each arrived, in seconds
        since the server started (monotonic). A dropped answer has status None.
        """
        return self._on_loop(lambda: list(self._state.log))

    def reset(self) -> None:
        """Clear consents, counters, the request log and the rate window."""
        self._on_loop(self._state.reset)

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change config fields at run time (e.g. `configure(fault_unavailable=0)`).

        Raises:
            ValueError: an unknown field or an invalid value; nothing changed.
        """
        return self._on_loop(lambda: self._state.configure(**changes))


@contextlib.contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningSandbox]:
    """Serve a sandbox in a background thread for the duration of the block.

    Port 0 picks a free port; read it from `base_url`. Works from sync and async code:
    the server has its own event loop in its own thread.
    """
    sandbox = RunningSandbox(config, host, port)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def serve(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8800,
    *,
    access_log: bool = False,
    log_level: str = "info",
) -> None:
    """Serve a sandbox until Ctrl-C or SIGTERM, then return normally.

    Prints `ClinikAPI sandbox listening on http://HOST:PORT` once bound (the real port
    when `port` is 0), so a parent process can read where to connect.
    """
    app = create_app(config)
    sock = _bind(host, port)
    options = {"access_log": access_log, "log_level": log_level}
    server = _Server(_uvicorn_config(app, **options), sandbox_state(app))
    url = _url(host, sock.getsockname()[1])
    print(f"ClinikAPI sandbox listening on {url} (Ctrl-C to stop)", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C before uvicorn installed its handlers
        pass
    finally:
        sock.close()

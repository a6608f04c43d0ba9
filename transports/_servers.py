"""Throwaway servers for tests: a private `redis-server` on a free loopback port.

    with start_redis(aof=True) as server:
        url = server.url               # "redis://127.0.0.1:PORT"
        server.kill()                  # SIGKILL, for fault tests
        server.restart()               # same port and directory: AOF data reloads

The server runs Debian's `redis-server` as a child process, in a fresh temporary directory,
bound to 127.0.0.1 on a port picked by binding a socket to port 0 (never 6379, which belongs
to someone else), with `--save ""` (no RDB snapshots) and `--appendonly yes|no`. With
`aof=True`, `appendfsync always` makes every acknowledged write durable, which is what fault
tests need. It also listens on a unix socket in its directory (`server.unix_socket`).

Nothing is left behind: `stop()` removes the directory, an `atexit` hook stops every server
still running, and on Linux the server gets SIGTERM if the thread that started it dies
(`PR_SET_PDEATHSIG`), so even a SIGKILLed test run leaves no `redis-server` around.

This module uses only sockets and subprocesses: it imports no pluq transport.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = ["RedisServer", "RedisServerError", "redis_server_available", "start_redis"]

_STARTUP_TIMEOUT = 30.0
"""Seconds to wait for PING after a (re)start; AOF reloads and a loaded machine are slow."""
_STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 5
"""Another process may take the port between our probe and the server's bind: retry."""

_live: set[RedisServer] = set()
_live_lock = threading.Lock()


class RedisServerError(RuntimeError):
    """Raised when redis-server is missing or does not start; the message says why."""


def redis_server_available() -> bool:
    """True when a `redis-server` binary is on PATH."""
    return shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _load_prctl() -> Callable[..., int] | None:
    # Resolved here, in the parent: the child between fork and exec must do as little as
    # possible (find_library would even start a subprocess).
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
CAN_SIGNAL_ON_PARENT_DEATH = _PRCTL is not None
"""Whether `parent_death_signal` works here (Linux)."""


def parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    # The server gets SIGTERM when the thread that started it exits, so that a test run
    # killed with SIGKILL (no atexit) does not leave a server behind.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServer:
    """A `redis-server` child process owned by this test run.

    Attributes:
        host: always "127.0.0.1".
        port: the TCP port, the same across `restart()`.
        directory: the server's working directory (AOF files, log, unix socket).
        password: the `requirepass` password, or None.
        aof: whether the append-only file is on.
    """

    host = "127.0.0.1"

    def __init__(
        self, *, port: int, directory: Path, aof: bool, password: str | None, binary: str
    ) -> None:
        self.port = port
        self.directory = directory
        self.aof = aof
        self.password = password
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`host:port`, as the contract kit's `{redis}` template wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT` (with `:password@` when the server has one)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.address}"

    @property
    def unix_socket(self) -> Path:
        """The path of the server's unix socket (mode 0700)."""
        return self.directory / "redis.sock"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (again) on its port and directory and wait until it answers.

        Raises:
            RedisServerError: it exited or did not answer PING within 30 s.
        """
        if self.running:
            return
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--unixsocket", str(self.unix_socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always" if self.aof else "everysec",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            # A terminal's Ctrl-C must not reach the server before the tests stop it.
            start_new_session=True,
            # PDEATHSIG fires when the *thread* that forked exits: only tie the server's
            # life to the main thread, never to a short-lived helper thread.
            preexec_fn=parent_death_signal
            if in_main_thread and CAN_SIGNAL_ON_PARENT_DEATH
            else None,
        )
        with _live_lock:
            _live.add(self)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        pause = 0.005
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                raise RedisServerError(
                    f"redis-server on port {self.port} exited during start-up "
                    f"(code {None if process is None else process.returncode}); "
                    f"its log says: {self._log_tail()}"
                )
            if self._answers_ping():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{_STARTUP_TIMEOUT:.0f} s; its log says: {self._log_tail()}"
                )
            time.sleep(pause)  # polling for readiness, with a deadline
            pause = min(pause * 2, 0.1)

    def _answers_ping(self) -> bool:
        request = b""
        replies = 1
        if self.password:
            pw = self.password.encode()
            request += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
            replies += 1
        request += b"*1\r\n$4\r\nPING\r\n"
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(request)
                reply = b""
                # Each reply here is one line: +OK, +PONG, or -LOADING while an AOF loads.
                while reply.count(b"\r\n") < replies:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        return reply.splitlines()[-1] == b"+PONG"

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log file)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, *, keep_dir: bool = False) -> None:
        """SIGTERM the server and wait for it (SIGKILL after 10 s); remove its directory
        unless `keep_dir`."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget()
        if not keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); its directory stays for `restart`."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._forget()

    def restart(self) -> None:
        """Stop the server if it runs (SIGTERM), then start it on the same port and
        directory, so that an append-only file is read back."""
        if self.running:
            self.stop(keep_dir=True)
        self.start()

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<RedisServer {self.address} aof={self.aof} {state}>"


def start_redis(*, aof: bool = False, password: str | None = None) -> RedisServer:
    """Start a private `redis-server` on a free 127.0.0.1 port and wait until it answers.

    Args:
        aof: turn on the append-only file with `appendfsync always` (survives `kill()`
            followed by `restart()`).
        password: set `requirepass`; `url` then carries it.

    Raises:
        RedisServerError: redis-server is not installed or does not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(
            "redis-server is not installed (not found on PATH); on Debian or Ubuntu run "
            "`apt-get install redis-server`"
        )
    last_error: RedisServerError | None = None
    for _ in range(_PORT_ATTEMPTS):
        port = _free_port()
        if port == 6379:  # pragma: no cover - never take the shared server's port
            continue
        directory = Path(tempfile.mkdtemp(prefix="pluq-redis-"))
        server = RedisServer(
            port=port, directory=directory, aof=aof, password=password, binary=binary
        )
        try:
            server.start()
        except RedisServerError as exc:
            # Most likely someone took the port between the probe and the bind.
            server.stop()
            last_error = exc
            continue
        return server
    assert last_error is not None
    raise last_error


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def _main() -> None:  # pragma: no cover - a manual check: python transports/_servers.py
    with start_redis(aof=True) as server:
        print(server, server.url, os.getpid())


if __name__ == "__main__":  # pragma: no cover
    _main()

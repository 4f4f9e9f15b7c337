"""Ports for the servers the tests start.

A port free when a test picks it may be taken before its server binds it: by another xdist process's
server, or by any other program on the machine. So a server is started on a port and then waited for
until that very process listens on it (a connection alone may reach whoever took the port); where it
exits having lost the port, it is started again on another.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

TRIES = 5


class PortTaken(Exception):
    """A server could not bind its port: another process took it after it was picked."""


def free_port() -> int:
    """A port nobody listens on now; start a server on it through `serve`, which retries if it is lost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(start: Callable[[int], object]):
    """start(port) on a free port, and again on another each time it raises PortTaken; what it returns."""
    for attempt in range(TRIES):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == TRIES - 1:
                raise


def clash(output: str) -> bool:
    """Whether a server's output says it could not bind its port (Python's, Go's, SeaweedFS's, PostgreSQL's words)."""
    text = output.lower()
    return "address already in use" in text or "port allocation failed" in text


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` itself has a socket listening on `port` (on any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # it has exited
        return False
    for fd in fds:
        try:
            if str(fd.readlink()) in inodes:
                return True
        except FileNotFoundError:  # closed meanwhile
            pass
    return False


def wait_listening(proc: subprocess.Popen, port: int, output: Callable[[], str], timeout: float = 60) -> None:
    """Wait until `proc` listens on `port`; PortTaken if it exits having lost the port, else an AssertionError."""
    deadline = time.monotonic() + timeout
    while not listening(proc.pid, port):
        if proc.poll() is not None:
            if clash(output()):
                raise PortTaken(port)
            raise AssertionError(f"the server exited ({proc.returncode}) before listening on {port}:\n{output()[-2000:]}")
        assert time.monotonic() < deadline, f"the server did not listen on {port} in {timeout:.0f} s:\n{output()[-2000:]}"
        time.sleep(0.2)

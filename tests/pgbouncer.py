"""A throwaway PgBouncer in transaction mode in front of a test PostgreSQL server (tests/pgserver.py),
from the machine's own binary (Debian's pgbouncer package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgserver import PASSWORD, USER, PostgresServer, process_tree_cpu_seconds


def find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.path.exists(p)), None)


class PgBouncer:
    """Any number of clients on `pool_size` server connections; a client waits for one per transaction."""

    def __init__(self, binary: str, server: PostgresServer, pool_size: int):
        self.binary, self.server, self.pool_size = binary, server, pool_size
        self.root = Path(tempfile.mkdtemp(prefix="fer-pgbouncer-"))
        with socket.socket() as s:  # a port nobody listens on now
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PgBouncer":
        (self.root / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
        (self.root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={self.server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {self.root}/userlist.txt
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 2000
""")
        # Like PostgreSQL, PgBouncer refuses to run as root.
        as_user = self.server.as_user
        if as_user:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        self.proc = subprocess.Popen([*as_user, self.binary, str(self.root / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "log", "w"))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, (self.root / "log").read_text()
                time.sleep(0.1)

    def url(self, server_url: str) -> str:
        """A database of the server, reached through the pooler."""
        return server_url.replace(f":{self.server.port}/", f":{self.port}/")

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

"""A throwaway PostgreSQL server from the machine's own binaries, for the tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from ports import PortTaken, clash, serve

USER, PASSWORD = "fer", "pg-test-secret"


def find_bin() -> Path | None:
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    return Path(os.path.realpath(initdb)).parent if initdb else None


class PostgresServer:
    def __init__(self, bindir: Path, max_connections: int = 200):
        self.bindir, self.max_connections = bindir, max_connections
        # PostgreSQL refuses to run as root: run it as the 'postgres' user, in a
        # folder that user owns (pytest's own tmp folders are root-only).
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="fer-pg-"))
        self.data = self.root / "data"
        self.port = 0  # start() picks it
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, cwd=self.root)

    def start(self) -> "PostgresServer":
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self.as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
        serve(self._start_on)
        return self

    def _start_on(self, port: int) -> None:
        self.port = port
        log = self.root / "log"
        seen = log.stat().st_size if log.exists() else 0
        try:
            self.pg_ctl("start")
        except subprocess.CalledProcessError:
            # "could not bind IPv4 address "127.0.0.1": Address already in use", in this try's part of the log
            if clash(log.read_bytes()[seen:].decode(errors="replace")):
                raise PortTaken(port) from None
            raise

    def pg_ctl(self, action: str, mode: str = "fast") -> None:
        # The test user is a superuser: no slots kept back for one, so that max_connections is what clients get.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections={self.max_connections} -c superuser_reserved_connections=0")
        args = ["-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-o", opts]
        if action in ("stop", "restart"):
            args += ["-m", mode]
        self._run("pg_ctl", action, *args)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def connect(self):
        """A connection to the server's own database, to look at the server with."""
        import psycopg

        return psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres",
                               autocommit=True)

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def cpu_seconds(self) -> float:
        """The CPU time the server has used so far: the postmaster, its processes and the ones that ended."""
        return process_tree_cpu_seconds(int((self.data / "postmaster.pid").read_text().split()[0]))

    def stop(self) -> None:
        try:
            self.pg_ctl("stop", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def client_connections(conn) -> int:
    """The connections clients hold on the server now, `conn` (a PostgresServer.connect()) left out."""
    return conn.execute("SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]


def process_tree_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process, of its children that ended and were waited for, and of the live ones."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(process_tree_cpu_seconds(int(child)) for child in children
                     if Path(f"/proc/{child}").exists())

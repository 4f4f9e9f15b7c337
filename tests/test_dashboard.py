"""optuna-dashboard on a real study, loaded by a real headless browser."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from conftest import ROOT, TINY, fer_opt
from ports import serve, wait_listening

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def start_dashboard(log: Path, *args, cwd: Path = ROOT, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """`fer-opt dashboard ARGS` once it listens on a port of its own, and that port; its output in `log`."""
    def start(port: int) -> tuple[subprocess.Popen, int]:
        server = subprocess.Popen([sys.executable, "-m", "fer_optuna.cli", "dashboard", *map(str, args), "--port", str(port)],
                                  cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            wait_listening(server, port, log.read_text)
        except BaseException:
            if server.poll() is None:
                server.kill()
                server.wait()
            raise
        return server, port

    return serve(start)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def _browser(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=20000", "--window-size=1400,1000"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


def assert_painted(shot) -> None:
    """A browser's screenshot shows a drawn page, not a blank or still-loading one (an app bar and icons
    at most): ink, away from the background, on a good part of the page below the bar, in many colours."""
    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)[100:]
    background = np.median(page.reshape(-1, 3), axis=0)
    ink = (np.abs(page - background).sum(-1) > 60).mean()
    colours = len(np.unique(page.reshape(-1, 3), axis=0))
    assert ink > 0.01 and colours > 64, f"{shot}: ink on {ink:.2%} of the page, {colours} colours"


def test_the_painted_check_tells_a_drawn_page_from_a_loading_one(tmp_path):
    drawn = ROOT / "docs" / "dashboard-pareto.png"  # the pareto page as tests/test_deploy.py screenshots it
    assert_painted(drawn)
    loading = np.asarray(Image.open(drawn).convert("RGB")).copy()
    loading[70:, 70:] = 255  # the app bar and the side icons only
    for image in (loading, np.full_like(loading, 255)):
        Image.fromarray(image).save(tmp_path / "shot.png")
        with pytest.raises(AssertionError, match="ink on"):
            assert_painted(tmp_path / "shot.png")


def test_dashboard_shows_the_study_and_its_trials_in_a_browser(tmp_path):
    chromium = _chromium()
    url = f"sqlite:///{tmp_path}/study.db"
    fer_opt("create-study", "--config", TINY, "--storage", url, "--data", ROOT / "README.md")
    study = optuna.load_study(study_name="tiny", storage=url)
    for value in (0.41, 0.52, 0.47):  # finished trials, as workers would leave them
        trial = study.ask()
        for epoch in (1, 2):
            trial.report(value - 0.1 / epoch, epoch)
        study.tell(trial, value)
    log = tmp_path / "dashboard.log"
    server, port = start_dashboard(log, "--storage", url)
    try:
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials"
        for _ in range(3):  # the page is a JavaScript app: a slow first start may catch it still loading
            dom = _browser(chromium, tmp_path, "--dump-dom", page).stdout
            if "3 Trials" in dom:
                break
        assert "tiny (id=" in dom and "3 Trials" in dom, dom[-2000:]
        assert all(f"Trial {i}" in dom for i in range(3)) and "Best Trial" in dom
        assert "0.41" in dom, "the selected first trial shows its value"
        shot = tmp_path / "dashboard.png"
        _browser(chromium, tmp_path, f"--screenshot={shot}", page)
        assert_painted(shot)
        if os.environ.get("FER_OPT_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["FER_OPT_KEEP_SCREENSHOT"])
    finally:
        stop(server)
    assert f"http://127.0.0.1:{port}/dashboard/" in log.read_text()


def test_dashboard_warns_when_exposed(tmp_path):
    log = tmp_path / "dashboard.log"
    server, _ = start_dashboard(log, "--storage", f"sqlite:///{tmp_path}/s.db", "--host", "0.0.0.0")
    stop(server)  # it warns before it listens
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine" in log.read_text()

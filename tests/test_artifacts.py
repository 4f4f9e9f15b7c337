"""Every trial's outputs in an artifact store (a folder, or a real S3 server): hosts that share only the
database and the store resume each other's trials and export each other's models."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, fer_opt, tiny_study
from fer_optuna.search import artifacts
from fer_optuna.training import checkpoints
from fer_optuna.errors import FerOptError
from test_dashboard import _browser, _chromium, assert_painted, start_dashboard, stop
from held import held_command
from test_workers import check_resumed_where_it_stopped, wait_for, wait_held

pytestmark = pytest.mark.slow


def host(tmp_path, name: str, s3, *args: str, log=None, env=None, held_after: int = 0) -> subprocess.Popen:
    """A `fer-opt` process on a 'host' of its own: its own folder (so its own checkpoint dir) and S3 credentials;
    with held_after, its first trial held after that epoch (tests/held.py, as test_workers.wait_held waits for)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    log = log or folder / "log"
    cmd = held_command(held_after, log, *args) if held_after else [sys.executable, "-m", "fer_optuna.cli", *map(str, args)]
    return subprocess.Popen(cmd, cwd=folder, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **s3.env(), "FER_OPT_HEARTBEAT": "1", **(env or {})})


def objects(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_two_hosts_sharing_only_the_database_and_s3_resume_and_export(postgres, s3, tmp_path, sample_csv):
    url, bucket = postgres.new_database(), s3.new_bucket()
    spec = tiny_study(tmp_path / "two.yaml", train={"epochs": 3}, n_trials=2)  # A dies after epoch 2 of 3
    created = fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv,
                      "--artifacts", f"s3://{bucket}/studies", env=s3.env()).stdout
    assert f"artifacts in s3://{bucket}/studies" in created and "s3-test-secret" not in created
    a = host(tmp_path, "host-a", s3, "worker", "--storage", url, "--gpu", "cpu", "--threads", "1", held_after=2)
    # A's first trial has saved its second epoch in S3 and is held there: then A dies without a word.
    wait_held(a, tmp_path / "host-a" / "log")
    a.send_signal(signal.SIGKILL)
    a.wait()
    study = optuna.load_study(study_name="tiny", storage=url)
    [killed] = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert killed.intermediate_values.keys() == {1, 2}
    assert any(k.startswith("studies/") for k in objects(s3, bucket)), "the running trial's state is in the store"
    assert not (tmp_path / "host-b").exists()
    b = host(tmp_path, "host-b", s3, "worker", "--storage", url, "--gpu", "cpu", "--threads", "1")
    assert b.wait(timeout=600) == 0, (tmp_path / "host-b" / "log").read_text()
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == killed.number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and check_resumed_where_it_stopped(trials) == [retry]
    assert not (tmp_path / "host-b" / "studies" / "checkpoints" / "tiny" / f"trial-{killed.number}.state.pt").exists()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Each finished trial left its checkpoint, confusion matrix and learning curve; no working file is left over.
    assert sorted(objects(s3, bucket)) == sorted(f"studies/{t.user_attrs[k]}" for t in finished for k in
                                                 ("checkpoint_artifact", "confusion_matrix_artifact", "learning_curve_artifact"))
    # A third host, with no checkpoint folder at all, exports the best model from the store.
    c = tmp_path / "host-c"
    c.mkdir()
    env = {**s3.env()}
    out = subprocess.run([sys.executable, "-m", "fer_optuna.cli", "export", "--storage", url, "-o", "best.yaml",
                          "--model", "best.pt", "--onnx", "best.onnx"], cwd=c, env={**os.environ, **env},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(fer_opt("evaluate", "--model", c / "best.pt", "--data", sample_csv, "--json",
                                "--precision", "fp32").stdout)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert abs(report["accuracy"] - best.value) < 1e-6 and (c / "best.onnx").stat().st_size > 1000


def test_the_dashboard_lists_and_previews_a_trials_artifacts(s3, tmp_path, sample_csv):
    chromium = _chromium()
    url, bucket = f"sqlite:///{tmp_path}/s.db", s3.new_bucket()
    spec = tiny_study(tmp_path / "one.yaml", n_trials=1, train={"epochs": 2})
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv, "--artifacts", f"s3://{bucket}",
            env=s3.env())
    fer_opt("worker", "--storage", url, "--gpu", "cpu", "--checkpoint-dir", tmp_path / "ckpt", env=s3.env())
    study = optuna.load_study(study_name="tiny", storage=url)
    [trial] = study.trials
    server, port = start_dashboard(tmp_path / "dashboard.log", "--storage", url, cwd=tmp_path, env=s3.env())
    try:
        listed = _get(f"http://127.0.0.1:{port}/api/studies/{study._study_id}")["trials"][0]["artifacts"]
        names = sorted(a["filename"] for a in listed)
        assert names == ["trial-0.confusion.png", "trial-0.curve.png", "trial-0.pt"], listed
        png = next(a for a in listed if a["filename"] == "trial-0.curve.png")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{trial._trial_id}/"
                                    f"{png['artifact_id']}") as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials"
        for _ in range(3):  # a JavaScript app: a slow first start may catch it still loading
            dom = _browser(chromium, tmp_path, "--dump-dom", page).stdout
            if "trial-0.curve.png" in dom:
                break
        assert "trial-0.pt" in dom and "trial-0.confusion.png" in dom, dom[-3000:]
        shot = tmp_path / "artifacts.png"
        _browser(chromium, tmp_path, f"--screenshot={shot}", page)
        assert_painted(shot)
        if os.environ.get("FER_OPT_KEEP_SCREENSHOT"):
            import shutil

            shutil.copy(shot, os.environ["FER_OPT_KEEP_SCREENSHOT"].replace(".png", "-artifacts.png"))
    finally:
        stop(server)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def test_an_s3_outage_mid_study_loses_nothing(s3, tmp_path, sample_csv):
    url, bucket = f"sqlite:///{tmp_path}/s.db", s3.new_bucket()
    # Trial 0 finishes before the outage, trial 1 meets it, trial 2 runs after it.
    spec = tiny_study(tmp_path / "three.yaml", n_trials=3, pruner={"type": "none"})
    fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv, "--artifacts", f"s3://{bucket}",
            env=s3.env())
    worker = host(tmp_path, "worker", s3, "worker", "--storage", url, "--gpu", "cpu")
    study = optuna.load_study(study_name="tiny", storage=url)
    wait_for(lambda: len(study.get_trials(states=(TrialState.COMPLETE,))) >= 1, 300, "a finished trial")
    s3.stop()
    log = tmp_path / "worker" / "log"  # the outage lasts until the worker has met it (the next trial's first epoch)
    wait_for(lambda: "unavailable" in log.read_text(), 300, "the worker to find the store gone")
    s3.start()
    assert worker.wait(timeout=600) == 0, log.read_text()
    text = log.read_text()
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, text
    assert all(t.user_attrs.get("checkpoint_artifact") for t in trials), "every trial's files reached the store"
    assert "artifact store" in text and "unavailable" in text and "Traceback" not in text


def test_bad_stores_are_one_line_without_secrets(s3, tmp_path, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(FerOptError, match=r"artifact store s3://no-such-bucket/x: cannot write .*(NoSuchBucket|Denied)") as err:
        artifacts.ArtifactStore("s3://no-such-bucket/x").check()  # only create-study makes a missing bucket
    assert "s3-test-secret" not in str(err.value)
    create = ("create-study", "--config", ROOT / "tests" / "studies" / "tiny.yaml", "--storage", f"sqlite:///{tmp_path}/s.db",
              "--data", ROOT / "README.md", "--artifacts", "s3://new-bucket/runs")
    away = {**s3.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "FER_OPT_ARTIFACT_RETRY_SECONDS": "1"}
    proc = fer_opt(*create, env=away, check=False)
    # A notice that it waits, then one line: what was lost, for how long, how to fix it.
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "s3-test-secret" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: lost the artifact store s3://new-bucket/runs for over 1 s")
    assert proc.stderr.strip().endswith("(StoreOptions.artifact_retry_seconds sets the wait) (environment: "
                                        "FER_OPT_ARTIFACT_RETRY_SECONDS)")
    assert not optuna.get_all_study_names(f"sqlite:///{tmp_path}/s.db"), "nothing half-made"
    assert "artifacts in s3://new-bucket/runs" in fer_opt(*create, env=s3.env()).stdout  # the bucket is made
    folder = artifacts.ArtifactStore(str(tmp_path / "store"))
    folder.check()
    (tmp_path / "f").write_bytes(b"x" * 1000)
    folder.put("abc", tmp_path / "f")
    assert folder.get("abc", tmp_path / "g").read_bytes() == b"x" * 1000


def test_a_sqlite_study_keeps_its_artifacts_beside_the_database_and_copy_says_so(tmp_path, sample_csv, postgres):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = tiny_study(tmp_path / "one.yaml", n_trials=1, train={"epochs": 1})
    out = fer_opt("create-study", "--config", spec, "--storage", url, "--data", sample_csv).stdout
    assert f"artifacts in {tmp_path / 'artifacts'}" in out
    fer_opt("worker", "--storage", url, "--gpu", "cpu", "--checkpoint-dir", tmp_path / "ckpt")
    [trial] = optuna.load_study(study_name="tiny", storage=url).trials
    ckpt = checkpoints.read_checkpoint(tmp_path / "artifacts" / trial.user_attrs["checkpoint_artifact"])
    assert ckpt["kind"] == "model"
    copied = fer_opt("storage", "copy", "--from", url, "--to", postgres.new_database()).stdout
    assert f"its artifacts stay in {tmp_path / 'artifacts'}" in copied

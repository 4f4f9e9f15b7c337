"""Each trial's files in an artifact store that every machine of a study reaches.

A study records one store (`create-study --artifacts URL`): a folder (Optuna's file-system
store; the default beside a SQLite study file) or `s3://bucket/prefix` (Optuna's boto3
store; endpoint and credentials from the standard AWS variables, e.g. AWS_ENDPOINT_URL).
What a trial keeps there is trial_files.py's business. The store is treated like the
database: transient errors are retried with backoff (StoreOptions.artifact_retry_seconds).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound

from fer_optuna.errors import FerOptError
from fer_optuna.options import StoreOptions
from fer_optuna.training.files import PartialFile
from . import retry
from .optuna_private import study_system_attrs

_log = logging.getLogger("fer_optuna.artifacts")
ATTR_ARTIFACTS = "fer_opt.artifacts"  # the study's store URL (never credentials)
T = TypeVar("T")


class StoreUnavailable(FerOptError):
    """The store stayed unreachable past the retry deadline: the trial in hand fails and is queued again."""


def default_url(storage_url: str) -> str | None:
    """A SQLite study keeps its artifacts in a folder beside the database file; other storages have no default."""
    if storage_url.startswith("sqlite:///"):
        return str(Path(storage_url.removeprefix("sqlite:///")).resolve().parent / "artifacts")
    return None


def _is_transient(error: Exception) -> bool:
    """A store that is away for now (connection refused or lost, a timeout, a 5xx, throttling), not a wrong name or key."""
    try:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:
        return False
    if isinstance(error, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in ("SlowDown", "RequestTimeout", "Throttling")
    return False


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


class ArtifactStore:
    """A study's store: Optuna's ArtifactStore protocol (open_reader, write, remove), each call retried while
    the store is unreachable, plus what fer-optuna does with it (put and get files)."""

    def __init__(self, url: str, options: StoreOptions | None = None):
        self.url, self.retry_seconds = url, (options or StoreOptions()).artifact_retry_seconds
        if url.startswith("s3://"):
            bucket, _, prefix = url.removeprefix("s3://").partition("/")
            if not bucket:
                raise FerOptError(f"artifact store {url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
            import boto3

            self.backend = optuna.artifacts.Boto3ArtifactStore(bucket, client=boto3.client("s3"))
            self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        else:
            folder = Path(url.removeprefix("file://")).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            self.backend = optuna.artifacts.FileSystemArtifactStore(folder)
            self.prefix = ""

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        seconds = self.retry_seconds
        try:
            return retry.retried(
                call, _is_transient, seconds,
                warn=lambda e: _log.warning("artifact store %s unavailable (%s); retrying for up to %.0f s", self.url,
                                            _reason(e), seconds),
                gave_up=lambda e: StoreUnavailable(
                    f"lost the artifact store {self.url} for over {seconds:.0f} s ({_reason(e)}); check that it is up "
                    "(StoreOptions.artifact_retry_seconds sets the wait)", setting="StoreOptions.artifact_retry_seconds"))
        except (ArtifactNotFound, FerOptError):
            raise
        except Exception as e:
            raise FerOptError(f"artifact store {self.url}: cannot {what} ({_reason(e)}); check the URL, the "
                              "bucket and the credentials (AWS_* variables)") from None

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._retrying(f"read {artifact_id}", lambda: self.backend.open_reader(self.prefix + artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        start = content_body.tell()

        def write() -> None:
            content_body.seek(start)  # a retry sends the whole body again
            self.backend.write(self.prefix + artifact_id, content_body)

        self._retrying(f"write {artifact_id}", write)

    def remove(self, artifact_id: str) -> None:
        self._retrying(f"remove {artifact_id}", lambda: self.backend.remove(self.prefix + artifact_id))

    def put(self, artifact_id: str, path: Path) -> None:
        with open(path, "rb") as f:
            self.write(artifact_id, f)

    def get(self, artifact_id: str, path: Path) -> Path:
        """Download to `path`, whole or not at all."""
        with PartialFile(path) as tmp, open(tmp, "wb") as out:
            reader = self.open_reader(artifact_id)
            try:
                shutil.copyfileobj(reader, out, 1 << 20)
            finally:
                reader.close()
        return path

    def prepare(self) -> None:
        """Make the store ready for a new study: an S3 bucket that does not exist yet is made; then check()."""
        if isinstance(self.backend, optuna.artifacts.Boto3ArtifactStore):
            from botocore.exceptions import ClientError

            client, bucket = self.backend.client, self.backend.bucket

            def make_bucket() -> None:
                try:
                    client.head_bucket(Bucket=bucket)
                except ClientError as e:
                    if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                        raise
                    client.create_bucket(Bucket=bucket)

            self._retrying(f"make the bucket {bucket}", make_bucket)
        self.check()

    def check(self) -> None:
        """Write, read back and remove a small object: a wrong URL, bucket or key fails now, with one line."""
        probe = f"fer-optuna-probe-{uuid.uuid4().hex}"
        with tempfile.TemporaryFile() as f:
            f.write(b"ok")
            f.seek(0)
            self.write(probe, f)
        reader = self.open_reader(probe)
        reader.close()
        self.remove(probe)

    def upload(self, path: Path, trial: optuna.Trial, mimetype: str) -> str:
        """A file of a trial's as an Optuna artifact, which the dashboard lists; returns its id."""
        return optuna.artifacts.upload_artifact(artifact_store=self, file_path=str(path), study_or_trial=trial,
                                                mimetype=mimetype)


def storage_store(storage: optuna.storages.BaseStorage, override: str | None = None,
                  options: StoreOptions | None = None) -> ArtifactStore | None:
    """The store of a storage's studies, for the dashboard, which serves them all (the first, if they differ)."""
    urls = [s.system_attrs.get(ATTR_ARTIFACTS) for s in storage.get_all_studies()]
    url = override or next((u for u in urls if u), None)
    return ArtifactStore(url, options) if url else None


def study_store(study: optuna.Study, override: str | None = None, options: StoreOptions | None = None) -> ArtifactStore | None:
    """The study's artifact store (or `override`'s); None for a study without one."""
    url = override or study_system_attrs(study).get(ATTR_ARTIFACTS)
    return ArtifactStore(url, options) if url else None

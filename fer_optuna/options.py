"""Settings from the environment, read once, at the edge.

The library reads no environment variable: its functions take these frozen options (or
plain arguments) and default to the values below. The command line reads the variables
once with `Settings.from_env()`; a Python caller who wants the same does the same:

    settings = Settings.from_env()
    data.load("fer2013.csv", options=settings.data)

The study storage, data, artifact store and inference precision are command-line flags
that also read FER_OPT_STORAGE, FER_OPT_DATA, FER_OPT_ARTIFACTS and FER_OPT_PRECISION
(docs/development.md lists every variable).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import FerOptError


# The option each variable sets; a FerOptError's `setting` names one, and the command line adds its variable.
VARIABLES = {
    "DataOptions.cache_dir": "FER_OPT_CACHE",
    "DataOptions.max_input_mb": "FER_OPT_MAX_INPUT_MB",
    "StoreOptions.heartbeat_seconds": "FER_OPT_HEARTBEAT",
    "StoreOptions.db_retry_seconds": "FER_OPT_DB_RETRY_SECONDS",
    "StoreOptions.artifact_retry_seconds": "FER_OPT_ARTIFACT_RETRY_SECONDS",
    "Settings.cpu_bf16": "FER_OPT_CPU_BF16",
}


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "fer-optuna"


@dataclass(frozen=True)
class DataOptions:
    """How a FER2013 source is read: where its parse is cached, and the ceiling on its decompressed size
    (a decompression bomb stops there; the full CSV is 300 MB)."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    max_input_mb: float = 2048

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)


@dataclass(frozen=True)
class StoreOptions:
    """How long the study storage and the artifact store are waited for while they are away, and the
    workers' heartbeat (a dead worker's trial is retried after three missed beats)."""

    heartbeat_seconds: int = 10
    db_retry_seconds: float = 300
    artifact_retry_seconds: float = 120


@dataclass(frozen=True)
class Settings:
    """Every setting the environment holds. `cpu_bf16` overrides the detection of a CPU that runs bf16
    natively (None: detect), for training with `precision: auto`."""

    data: DataOptions = field(default_factory=DataOptions)
    stores: StoreOptions = field(default_factory=StoreOptions)
    cpu_bf16: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """FER_OPT_CACHE (else $XDG_CACHE_HOME/fer-optuna), FER_OPT_MAX_INPUT_MB, FER_OPT_HEARTBEAT,
        FER_OPT_DB_RETRY_SECONDS, FER_OPT_ARTIFACT_RETRY_SECONDS and FER_OPT_CPU_BF16 (0 or 1);
        an unset variable keeps the default."""
        cache = env.get(VARIABLES["DataOptions.cache_dir"]) or (
            Path(env["XDG_CACHE_HOME"]) / "fer-optuna" if env.get("XDG_CACHE_HOME") else default_cache_dir())
        forced = _read(env, "Settings.cpu_bf16", int, None)
        if forced not in (None, 0, 1):
            raise FerOptError(f"{VARIABLES['Settings.cpu_bf16']}={forced}: expected 0 or 1 (or leave it unset to detect)")
        stores = StoreOptions(_read(env, "StoreOptions.heartbeat_seconds", int, StoreOptions.heartbeat_seconds),
                              _read(env, "StoreOptions.db_retry_seconds", float, StoreOptions.db_retry_seconds),
                              _read(env, "StoreOptions.artifact_retry_seconds", float, StoreOptions.artifact_retry_seconds))
        return cls(DataOptions(Path(cache), _read(env, "DataOptions.max_input_mb", float, DataOptions.max_input_mb)),
                   stores, None if forced is None else forced == 1)


def _read(env: Mapping[str, str], setting: str, kind: type, default):
    name = VARIABLES[setting]
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise FerOptError(f"{name}={raw!r}: expected a {'whole ' if kind is int else ''}number") from None

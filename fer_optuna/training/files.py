"""Files written whole or not at all.

Every file the package writes (checkpoints, run states, data caches, downloads, annotated
photos and videos, prediction rows) is written under a temporary name beside its target and
renamed when whole: a reader never sees half of one, whenever the writer is killed, and two
processes writing the same file both end with a whole one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class PartialFile:
    """A temporary path beside `target` (same suffix, so writers that go by it pick the format) that
    becomes `target` on close(keep=True). As a context manager: kept if the block ends without error."""

    def __init__(self, target: str | Path):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # A unique name, so that two writers never share one; the writer creates it with the usual permissions.
        self.path = self.target.with_name(f".{self.target.stem}.{uuid.uuid4().hex[:12]}.partial{self.target.suffix}")

    def close(self, keep: bool) -> None:
        try:
            if keep:
                os.replace(self.path, self.target)
        finally:
            self.path.unlink(missing_ok=True)  # nothing after a rename; else what the writer left

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, kind, error, traceback) -> None:
        self.close(keep=kind is None)

"""A data file's payload as a stream: compression and archives peeled off as it is read.

The Kaggle CSV comes plain, as .gz/.xz/.bz2, in a .zip, or as the challenge's
fer2013.tar.gz. Each layer is opened on top of the last and read piece by piece, so
that parsing a 300 MB CSV never holds it whole; nothing is extracted to disk, so a
hostile member name cannot escape. Every byte read counts against a ceiling
(DataOptions.max_input_mb), which stops a decompression bomb early, and a broken archive
ends in one message that names the file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from fer_optuna.errors import FerOptError

COMPRESSION = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f)), (b"\xfd7zXZ\x00", lzma.LZMAFile), (b"BZh", bz2.BZ2File))
HEAD = 512  # enough to tell every format apart: tar's magic sits at byte 257
BROKEN = (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError, zlib.error)


class _Guarded(io.RawIOBase):
    """A layer of the payload: `head` (bytes already read to sniff the format) given back first, every
    byte counted against the ceiling, and decompression errors turned into one message."""

    def __init__(self, inner: BinaryIO, name: str, head: bytes, limit: int):
        self.inner, self.name, self.head = inner, name, head
        self.read_so_far, self.limit = 0, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        try:
            data = self.inner.read(len(buffer))
        except BROKEN as e:
            raise FerOptError(f"{self.name}: cannot decompress ({e}); is the file complete?") from None
        self.read_so_far += len(data)
        if self.read_so_far > self.limit:
            raise FerOptError(f"{self.name}: decompresses to more than {self.limit // 2**20} MB; this is not a FER2013 "
                              "file (raise DataOptions.max_input_mb if it really is)", setting="DataOptions.max_input_mb")
        buffer[:len(data)] = data
        return len(data)


def _layer(inner: BinaryIO, name: str, head: bytes, limit: int) -> io.BufferedReader:
    return io.BufferedReader(_Guarded(inner, name, head, limit), buffer_size=1 << 20)


def _head(stream: BinaryIO) -> bytes:
    head = b""
    while len(head) < HEAD:
        more = stream.read(HEAD - len(head))
        if not more:
            break
        head += more
    return head


def _one_csv(names: list[str], where: str, kind: str) -> str:
    csvs = [n for n in names if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
    if len(csvs) != 1:
        raise FerOptError(f"{where}: expected one .csv file inside the {kind} archive, found {len(csvs)}")
    return csvs[0]


@contextmanager
def open_payload(path: Path, limit: int) -> Iterator[tuple[str, BinaryIO, str]]:
    """('csv' or 'npz', a binary stream of it, the name for messages: the file, or file:member); every layer
    stops past `limit` bytes."""
    name = str(path)

    def layer(inner: BinaryIO, where: str, head: bytes = b"") -> io.BufferedReader:
        return _layer(inner, where, head, limit)

    with ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        stream: BinaryIO = layer(raw, name)
        seekable = True  # still the file itself, which zip and npz readers can seek in
        while True:
            head = _head(stream)
            opener = next((o for magic, o in COMPRESSION if head.startswith(magic)), None)
            if opener is None:
                break
            stream = layer(stack.enter_context(opener(layer(stream, name, head))), name)
            seekable = False
        if head.startswith(b"PK\x03\x04"):
            # A zip's directory is at its end: seek in the file, or hold a compressed stream's zip in memory.
            if seekable:
                raw.seek(0)
                archive_file: BinaryIO = raw
            else:
                archive_file = io.BytesIO(head + stream.read())
            try:
                archive = stack.enter_context(zipfile.ZipFile(archive_file))
                members = archive.namelist()
            except BROKEN as e:
                raise FerOptError(f"{name}: not a readable zip archive ({e})") from None
            if members and all(m.endswith(".npy") for m in members):
                archive_file.seek(0)
                yield "npz", archive_file, name
                return
            member = _one_csv(members, name, "zip")
            yield "csv", layer(stack.enter_context(archive.open(member)), f"{name}:{member}"), f"{name}:{member}"
            return
        if len(head) > 262 and head[257:262] == b"ustar":
            # Streamed member by member (mode "r|"): the CSV is parsed as it is decompressed.
            archive = stack.enter_context(tarfile.open(fileobj=layer(stream, name, head), mode="r|"))
            try:
                members = iter(archive)
                for member in members:
                    if member.isfile() and _is_csv(member.name):
                        where = f"{name}:{member.name}"
                        yield "csv", layer(archive.extractfile(member), where), where
                        others = [m.name for m in members if m.isfile() and _is_csv(m.name)]
                        if others:
                            _one_csv([member.name, *others], name, "tar")
                        return
            except tarfile.TarError as e:
                raise FerOptError(f"{name}: not a readable tar archive ({e})") from None
            _one_csv([], name, "tar")
        yield "csv", layer(stream, name, head), name


def _is_csv(member: str) -> bool:
    return member.lower().endswith(".csv")

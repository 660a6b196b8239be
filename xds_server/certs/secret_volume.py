"""A directory laid out like a Kubernetes secret volume, written so no reader sees a mix.

The files of one version live in a timestamped directory `..<time>`; `..data` is a symlink
to it and every visible name (`tls.crt`) is a symlink through `..data`. A write fills and
fsyncs a new directory, lets the caller validate what is on disk, then swaps `..data` with
one rename and fsyncs the parent. A reader that resolves `..data` once (the server, an
Envoy watching the directory, a hot-restart epoch starting up) gets the old files or the new
ones, never some of each; a writer killed at any point leaves the old version in place.
The kubelet updates a mounted Secret the same way, so one reader serves both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

DATA = "..data"
_DATA_TMP = "..data_tmp"
SECRET_SUFFIXES = (".key",)
"""Files whose names end so are private keys: written 0600, everything else 0644."""


@dataclass(frozen=True)
class Version:
    """One consistent read: which version directory, and its files by name."""

    name: str
    files: dict[str, bytes]


class SecretVolume:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def current(self) -> str | None:
        """The version directory `..data` points at (None when there is none)."""
        try:
            return os.readlink(self.path / DATA)
        except OSError:
            return None

    def read(self) -> Version | None:
        """The files of one version; a swap during the read makes it read again."""
        for _ in range(10):
            name = self.current()
            if name is None:
                return self._read_plain()
            try:
                files = _read_files(self.path / name)
            except FileNotFoundError:
                continue  # swapped and collected while reading: read the new one
            if self.current() == name:
                return Version(name, files)
        return None

    def _read_plain(self) -> Version | None:
        """A directory of plain files (not written by us or the kubelet): best effort."""
        if not self.path.is_dir():
            return None
        files = _read_files(self.path)
        if not files:
            return None
        digest = hashlib.sha256()
        for file, data in sorted(files.items()):
            digest.update(file.encode() + b"\0" + hashlib.sha256(data).digest())
        return Version("plain:" + digest.hexdigest()[:16], files)

    def write(
        self,
        files: Mapping[str, bytes],
        check: Callable[[dict[str, bytes]], object] | None = None,
        mode: int | None = None,
        group: int | None = None,
    ) -> str:
        """Publish `files` as the new version; `check` sees them as read back from disk and
        raises to abandon the write (the old version stays). `mode` and `group` set every
        file's, before the swap, as the kubelet does with a volume's defaultMode and the
        pod's fsGroup (else: keys 0600, the rest 0644, the writer's group)."""
        self.path.mkdir(parents=True, exist_ok=True)
        name = _version_name()
        directory = self.path / name
        directory.mkdir(mode=0o755)
        try:
            for file, data in files.items():
                _write_file(directory / file, data, mode, group)
            _fsync_dir(directory)
            if check is not None:
                check(_read_files(directory))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._swap(name)
        self._link(set(files))
        self.collect()
        return name

    def _swap(self, name: str) -> None:
        tmp = self.path / _DATA_TMP
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        os.rename(tmp, self.path / DATA)
        _fsync_dir(self.path)

    def _link(self, names: set[str]) -> None:
        """Visible names through `..data`; names the new version lacks go away."""
        for name in names:
            visible = self.path / name
            target = f"{DATA}/{name}"
            if visible.is_symlink() and os.readlink(visible) == target:
                continue
            tmp = self.path / f".{name}.{secrets.token_hex(4)}"
            os.symlink(target, tmp)
            os.rename(tmp, visible)
        for entry in self.path.iterdir():
            if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in names:
                entry.unlink()
        _fsync_dir(self.path)

    def collect(self) -> None:
        """Remove old versions, keeping the current one and the one before it, so a reader
        that resolved `..data` just before the swap can finish reading."""
        current = self.current()
        versions = sorted(
            entry.name
            for entry in self.path.iterdir()
            if entry.name.startswith("..")
            and entry.name not in (DATA, _DATA_TMP, current)
            and entry.is_dir()
            and not entry.is_symlink()
        )
        for old in versions[:-1]:
            shutil.rmtree(self.path / old, ignore_errors=True)


def _version_name() -> str:
    """Sortable by time like the kubelet's `..2026_11_26_12_00_00.123456789`, and unique."""
    ns = time.time_ns()
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(ns // 1_000_000_000))
    return f"..{stamp}.{ns % 1_000_000_000:09d}{secrets.token_hex(2)}"


def _read_files(directory: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in directory.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        files[entry.name] = entry.read_bytes()
    return files


def _write_file(path: Path, data: bytes, mode: int | None = None, group: int | None = None) -> None:
    if mode is None:
        mode = 0o600 if path.name.endswith(SECRET_SUFFIXES) else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)  # after the group: a key is never readable by the wrong group
        file.write(data)
        file.flush()
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

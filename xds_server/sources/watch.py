"""Wake up when a directory changes, and say which entries: inotify on Linux, a timer
everywhere else.

A change to the manifests should reach Envoy at once, not at the next poll, and cost what
changed: inotify tells within microseconds which entry of a watched directory was written,
created, moved (an atomic rename, or the kubelet's `..data` swap) or removed, so the caller
re-reads that file alone. What names no single file (the queue overflowed, a watched
directory itself went away, an event for a directory we no longer know) asks for a full
look. Polling stays as a slow safety net, and is all there is when inotify is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

BURST_GAP = 0.025
"""At most one reload per 25 ms while changes keep coming; an isolated change waits 0 ms."""

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ISDIR = 0x40000000
_EVENTS = (
    0x00000004  # IN_ATTRIB
    | 0x00000008  # IN_CLOSE_WRITE
    | 0x00000040  # IN_MOVED_FROM
    | 0x00000080  # IN_MOVED_TO
    | 0x00000100  # IN_CREATE
    | 0x00000200  # IN_DELETE
    | _IN_DELETE_SELF  # the directory itself went away
    | _IN_MOVE_SELF
)
_RESCAN = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_Q_OVERFLOW | _IN_IGNORED | _IN_ISDIR
"""Events no single file explains: the tree's shape changed, or events were lost."""
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


@dataclass
class Changes:
    """What inotify reported since the last `take`: entries by path, or `everything` when
    the caller must look at the whole tree again."""

    paths: set[Path] = field(default_factory=set)
    everything: bool = False


class DirectoryWatcher:
    """`await changed(timeout)`: True when a watched directory changed, False on timeout.
    Or `await ready(timeout)`, then `take()` when `pending`: what changed."""

    def __init__(self) -> None:
        self._fd = -1
        self._watched: dict[Path, tuple[int, int]] = {}
        self._directories: dict[int, Path] = {}  # watch descriptor -> directory
        self._pending = Changes()
        self._event = asyncio.Event()
        libc_name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC) if self._libc else -1
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._fd = fd
            asyncio.get_running_loop().add_reader(fd, self._readable)

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def watch(self, directories: Iterable[Path]) -> None:
        """Add directories not watched yet, or watched as another inode (moved away and made
        again); a failure leaves polling to do the work."""
        if self._libc is None or self._fd < 0:
            return
        for directory in directories:
            try:
                info = os.stat(directory)
            except OSError:
                continue
            inode = (info.st_dev, info.st_ino)
            if self._watched.get(directory) == inode:
                continue
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _EVENTS)
            if wd >= 0:
                self._watched[directory] = inode
                self._directories[wd] = directory

    def _readable(self) -> None:
        try:
            while data := os.read(self._fd, 65536):
                self._parse(data)
        except BlockingIOError:
            pass
        self._event.set()

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            directory = self._directories.get(wd)
            name = raw.split(b"\0", 1)[0]
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF) and directory is not None:
                self._forget(wd, directory)  # watched again, as what it is now, after a look
            if mask & _RESCAN or directory is None or not name:
                self._pending.everything = True
            else:
                self._pending.paths.add(directory / os.fsdecode(name))

    def _forget(self, wd: int, directory: Path) -> None:
        del self._directories[wd]
        self._watched.pop(directory, None)
        if self._libc is not None:
            self._libc.inotify_rm_watch(self._fd, wd)  # its events would carry a stale path

    @property
    def pending(self) -> bool:
        """Something changed that `take` has not returned yet."""
        return self._event.is_set()

    async def ready(self, timeout: float) -> None:
        """Until something changed (`pending`), or `timeout`. Consumes nothing, so it may
        be cancelled at any time without losing a change: `take` consumes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)

    def take(self) -> Changes:
        """What changed since the last call (and forget it)."""
        self._event.clear()
        taken, self._pending = self._pending, Changes()
        return taken

    async def changed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

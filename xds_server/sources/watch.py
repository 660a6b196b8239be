"""Wake up when a directory changes: inotify on Linux, a timer everywhere else.

A change to the manifests should reach Envoy at once, not at the next poll. inotify tells
within microseconds that an entry of a watched directory was written, created, moved
(an atomic rename, or the kubelet's `..data` swap) or removed; the caller then re-reads
what changed. Polling stays as a slow safety net, and is all there is when inotify is not.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from pathlib import Path

BURST_GAP = 0.025
"""At most one reload per 25 ms while changes keep coming; an isolated change waits 0 ms."""

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENTS = (
    0x00000004  # IN_ATTRIB
    | 0x00000008  # IN_CLOSE_WRITE
    | 0x00000040  # IN_MOVED_FROM
    | 0x00000080  # IN_MOVED_TO
    | 0x00000100  # IN_CREATE
    | 0x00000200  # IN_DELETE
    | 0x00000400  # IN_DELETE_SELF: the directory itself went away
    | 0x00000800  # IN_MOVE_SELF
)


class DirectoryWatcher:
    """`await changed(timeout)`: True when a watched directory changed, False on timeout."""

    def __init__(self) -> None:
        self._fd = -1
        self._watched: dict[Path, tuple[int, int]] = {}
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
            if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _EVENTS) >= 0:
                self._watched[directory] = inode

    def _readable(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        self._event.set()

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

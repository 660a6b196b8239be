"""Kubernetes objects from a directory of manifests (the API source is api.py).

Every `*.yaml`/`*.yml`/`*.json` file may hold several documents. A file that does not parse
keeps its previous objects (the last good config stays), and every rejected file or object
gets one log line naming the file, kind and name. inotify says when the directory changed (a
poll backs it up): a change is a different (name, size, mtime) set, so an atomic rename, an
edit in place and a kubelet-style `..data` swap are all seen.

Hostile trees are survived: symlinks are followed, but a directory or file reached a second
way (a link loop, `ln -s . again`) is read once; a directory that disappears keeps the last
good objects (`problem` says why, readiness reports it); scanning and parsing run in a worker
thread, within the limits of `Limits`, so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from xds_server import collector
from xds_server.sources.objects import KubeObject, Limits, Loaded, TooMuch, parse_documents
from xds_server.sources.watch import BURST_GAP, DirectoryWatcher

SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.05
"""Seconds between looks at the directory (a stat per file) when inotify is missing."""

SAFETY_POLL = 1.0
"""With inotify, still look this often, in case an event was missed (e.g. a new subdirectory)."""


log = logging.getLogger("xds_server.sources")

Stamp = tuple[int, int, int]
"""(size, mtime in ns, inode) of a file: any of them changing means it must be read again."""


@dataclass
class Scan:
    files: dict[str, Stamp] = field(default_factory=dict)
    directories: list[Path] = field(default_factory=list)


class DirectorySource:
    """All objects of a directory, re-read when it changes; per-file last good content."""

    def __init__(self, directory: Path, limits: Limits | None = None) -> None:
        self.directory = directory
        self.limits = limits or Limits()
        self.problem: str | None = None
        """Why the directory cannot be read now (the last good objects are kept), or None."""
        self._good: dict[str, list[KubeObject]] = {}
        self._parsed: dict[str, tuple[Stamp, Loaded]] = {}  # only changed files re-parse
        self._seen: dict[str, Stamp] = {}  # files as of the last load (none yet)

    def scan(self) -> Scan:
        """Every manifest file with its stamp, and every directory to watch: one os.scandir
        walk (pathlib's rglob plus a stat per file cost 40 ms at 1,000 files). Symlinks are
        followed; what was reached before (same device and inode) is skipped, so loops end.
        Entries starting with `..` are skipped: a ConfigMap volume's real files live in
        `..<timestamp>/` behind the visible symlinks, and must not be read twice. Raises
        OSError when the directory itself is gone, TooMuch past `limits.files`."""
        root = os.stat(self.directory)
        if not stat.S_ISDIR(root.st_mode):
            raise NotADirectoryError(f"{self.directory} is not a directory")
        scan = Scan(directories=[self.directory])
        reached = {(root.st_dev, root.st_ino)}
        pending = [self.directory]
        while pending:
            directory = pending.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".."):
                    continue
                try:
                    info = entry.stat()  # through symlinks
                except OSError:
                    continue  # removed while we looked, or a dangling link
                if (info.st_dev, info.st_ino) in reached:
                    continue  # a loop, or a second way to the same place
                reached.add((info.st_dev, info.st_ino))
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
                    scan.directories.append(Path(entry.path))
                elif entry.name.endswith(SUFFIXES) and stat.S_ISREG(info.st_mode):
                    scan.files[entry.path] = (info.st_size, info.st_mtime_ns, info.st_ino)
                    if len(scan.files) > self.limits.files:
                        raise TooMuch(f"more than {self.limits.files} manifest files (--max-files)")
        return scan

    def load(self, scan: Scan | None = None) -> Loaded:
        """Read everything now: rejected files keep their last good objects. Raises TooMuch
        when all the files together hold more than `limits.objects` objects."""
        files = (scan or self.scan()).files
        result = Loaded()
        for path in sorted(files):
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == files[path]:  # unchanged: nothing to do
                result.objects.extend(cached[1].objects)
                result.errors.extend(cached[1].errors)
                continue
            source = os.path.relpath(path, self.directory)
            try:
                loaded = self._parse(path, source, files[path])
            except UnicodeDecodeError as exc:
                result.errors.append(
                    f"{source}: not UTF-8 text (invalid byte at offset {exc.start})"
                )
            except ValueError as exc:
                result.errors.append(str(exc))
            except OSError as exc:
                result.errors.append(f"{source}: cannot be read: {exc.strerror}")
            else:
                self._good[path] = loaded.objects
                result.objects.extend(loaded.objects)
                result.errors.extend(loaded.errors)
                continue
            result.objects.extend(self._good.get(path, []))
        for gone in set(self._good) - files.keys():
            del self._good[gone]
        for gone in set(self._parsed) - files.keys():
            del self._parsed[gone]
        if len(result.objects) > self.limits.objects:
            raise TooMuch(f"more than {self.limits.objects} objects (--max-objects)")
        result.objects = first_of_each(result.objects, result.errors)
        return result

    def _parse(self, path: str, source: str, stamp: Stamp) -> Loaded:
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if stamp[0] > self.limits.file_bytes:
            raise TooMuch(
                f"{source}: {stamp[0]} bytes, more than {self.limits.file_bytes} (--max-file-size)"
            )
        with collector.paused():
            loaded = parse_documents(Path(path).read_text(), source, self.limits)
        self._parsed[path] = (stamp, loaded)
        return loaded

    def look(self) -> tuple[Scan, Loaded | None] | None:
        """In a worker thread: the scan, and the objects if any file changed since the last
        look; None when the directory cannot be used (`problem` says why)."""
        try:
            scan = self.scan()
            if scan.files == self._seen:  # nothing added, removed, resized or touched
                loaded = None
            else:
                self._seen = scan.files
                loaded = self.load(scan)
        except (OSError, TooMuch) as exc:
            self._set_problem(
                f"manifests {self.directory}: {_reason(exc)}; the last good objects stay"
            )
            self._seen = {}  # once it is back, read it again whatever it holds
            return None
        self._set_problem(None)
        return scan, loaded

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem:
                log.error("%s", problem)
            else:
                log.info("manifests %s readable again", self.directory)
        self.problem = problem

    async def watch(self) -> AsyncIterator[Loaded]:
        """The objects now, then again after every change (inotify wakes us at once; the
        poll is the safety net, and the only way where inotify is missing)."""
        watcher = DirectoryWatcher()
        loop = asyncio.get_running_loop()
        last = -BURST_GAP
        try:
            while True:
                looked = await asyncio.to_thread(self.look)
                if looked is not None:
                    watcher.watch(looked[0].directories)
                    if looked[1] is not None:
                        last = loop.time()
                        yield looked[1]
                if await watcher.changed(SAFETY_POLL if watcher.active else POLL_INTERVAL):
                    # Leading edge at once; the rest of a burst coalesces into one reload.
                    await asyncio.sleep(max(0.0, last + BURST_GAP - loop.time()))
        finally:
            watcher.close()


def first_of_each(objects: list[KubeObject], errors: list[str]) -> list[KubeObject]:
    """One object per kind, namespace and name: the first file (in path order) defines it;
    each later copy is an error naming both files."""
    first: dict[tuple[str, str, str], KubeObject] = {}
    for obj in objects:
        kept = first.setdefault(obj.key, obj)
        if kept is not obj:
            errors.append(
                f"{obj.source}: {obj.kind} {obj.namespace}/{obj.name}: already defined in"
                f" {kept.source}, which is used"
            )
    return list(first.values()) if len(first) < len(objects) else objects


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the directory is missing"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)

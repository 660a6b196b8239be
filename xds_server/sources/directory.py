"""Kubernetes objects from a directory of manifests (the API source is api.py).

Every `*.yaml`/`*.yml`/`*.json` file may hold several documents. A file that does not parse
keeps its previous objects (the last good config stays), and every rejected file or object
gets one log line naming the file, kind and name. inotify says which file changed, and that
file alone is read again: a change costs what changed, however many files there are. A full
look (a stat per file) runs when inotify cannot name the file (a new subdirectory, a
kubelet-style `..data` swap, an overflow), and every SAFETY_POLL as the net for events that
were missed: a change is a different (name, size, mtime, inode) set, so an atomic rename, an
edit in place and a swap are all seen.

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
from xds_server.sources.watch import BURST_GAP, Changes, DirectoryWatcher

SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.05
"""Seconds between looks at the directory (a stat per file) when inotify is missing."""

INLINE_BYTES = 16 * 1024
"""Named files this small in all are read on the event loop itself (about a millisecond of
parsing): a worker thread's hand-over would cost a third of that change's time again."""

SAFETY_POLL = 1.0
"""With inotify, still walk the tree this often, in case an event was missed (a file changed
behind a symlink that points out of the tree)."""

STALE_WALK = 0.1
"""A walk made while a change was read is made again after this long (not at once: under a
burst of changes it would be stale again, and walk after walk would take the CPU)."""


log = logging.getLogger("xds_server.sources")

Stamp = tuple[int, int, int]
"""(size, mtime in ns, inode) of a file: any of them changing means it must be read again."""
Key = tuple[str, str, str]


@dataclass
class Scan:
    files: dict[str, Stamp] = field(default_factory=dict)
    directories: list[Path] = field(default_factory=list)


class Definitions:
    """Objects by key as the files define them: the first file (in path order) defines an
    object; a later copy is an error naming both files. Kept up to date one file at a time."""

    def __init__(self) -> None:
        self.objects: dict[Key, KubeObject] = {}
        self.count = 0
        """Objects in all files, copies included (what `--max-objects` bounds)."""
        self._by_key: dict[Key, list[tuple[str, KubeObject]]] = {}
        self._copies: set[Key] = set()
        self.touched: set[Key] = set()
        """Keys whose object changed since the caller last cleared this."""

    def replace(self, path: str, old: list[KubeObject], new: list[KubeObject]) -> None:
        for obj in old:
            self._by_key[obj.key] = [d for d in self._by_key[obj.key] if d[0] != path]
        for obj in new:
            self._by_key.setdefault(obj.key, []).append((path, obj))
        for key in {obj.key for obj in (*old, *new)}:
            defined = self._by_key[key]
            defined.sort(key=lambda d: d[0])  # stable: within a file, its first copy wins
            before = self.objects.get(key)
            if defined:
                self.objects[key] = defined[0][1]
            else:
                del self._by_key[key], self.objects[key]
            if self.objects.get(key) is not before:
                self.touched.add(key)
            if len(defined) > 1:
                self._copies.add(key)
            else:
                self._copies.discard(key)
        self.count += len(new) - len(old)

    def errors(self) -> list[str]:
        found = []
        for key in sorted(self._copies):
            kept = self._by_key[key][0][1]
            for _, obj in self._by_key[key][1:]:
                found.append(
                    f"{obj.source}: {obj.kind} {obj.namespace}/{obj.name}: already defined in"
                    f" {kept.source}, which is used"
                )
        return found


class DirectorySource:
    """All objects of a directory, kept up to date file by file; per-file last good content."""

    def __init__(self, directory: Path, limits: Limits | None = None) -> None:
        self.directory = directory
        self.limits = limits or Limits()
        self.problem: str | None = None
        """Why the directory cannot be read now (the last good objects are kept), or None."""
        self._parsed: dict[str, tuple[Stamp, Loaded]] = {}  # only changed files re-parse
        self._seen: dict[str, Stamp] = {}  # files as of the last look (none yet)
        self._files: dict[str, list[KubeObject]] = {}  # each file's last good objects
        self._errors: dict[str, str] = {}  # files that cannot be used now, and why
        self._notes: dict[str, list[str]] = {}  # files read with some objects rejected: why
        self._directories: set[str] = set()
        self._definitions = Definitions()
        self._last: Loaded | None = None
        self._looks = 0  # how many looks so far: a walk made across one is stale

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

    def load(self) -> Loaded:
        """Read everything now (what changed since the last look, after a full look)."""
        self._apply(self.scan())
        return self._loaded()

    def look(
        self, changes: Changes | None = None, walked: Scan | None = None
    ) -> tuple[Scan | None, Loaded | None] | None:
        """In a worker thread: the objects if any file changed since the last look, with the
        scan when it was a full one (its directories are to be watched). `changes` names the
        files to look at; None, or a change no file explains, is a full look (with the walk
        `walked`, if it was made already). None when the directory cannot be used
        (`problem` says why)."""
        return self._settle(self._named(changes), walked)

    def _named(self, changes: Changes | None) -> dict[str, Stamp | None] | None:
        """The files to look at, with their stamps now; None: a full look."""
        if changes is None or changes.everything or self.problem or not self._seen:
            return None
        return self._files_of(changes)

    def _settle(
        self, named: dict[str, Stamp | None] | None, walked: Scan | None = None
    ) -> tuple[Scan | None, Loaded | None] | None:
        """`look`, once the named files are stat'ed (None: walk the tree, or use `walked`)."""
        self._looks += 1
        try:
            if named is None:
                scan: Scan | None = walked or self.scan()
                assert scan is not None
                changed = self._apply(scan)
            else:
                scan, changed = None, self._refresh(named)
            loaded = self._loaded() if changed else None
        except (OSError, TooMuch) as exc:
            self._set_problem(
                f"manifests {self.directory}: {_reason(exc)}; the last good objects stay"
            )
            self._seen = {}  # once it is back, read it again whatever it holds
            return None
        self._set_problem(None)
        return scan, loaded

    def _files_of(self, changes: Changes) -> dict[str, Stamp | None] | None:
        """The manifest files an event named, with their stamps now (None: gone); None when
        the events say more than which files changed (a directory, or a `..data` swap)."""
        found: dict[str, Stamp | None] = {}
        for path in map(str, changes.paths):
            name = os.path.basename(path)
            if name.startswith("..") or path in self._directories:
                return None
            try:
                info = os.stat(path)
            except OSError:
                found[path] = None
                continue
            if stat.S_ISDIR(info.st_mode):
                return None  # a new directory (or a link to one): a full look watches it
            if name.endswith(SUFFIXES):
                regular = stat.S_ISREG(info.st_mode)
                found[path] = (info.st_size, info.st_mtime_ns, info.st_ino) if regular else None
        return found

    def _apply(self, scan: Scan) -> bool:
        """Make the objects those of `scan`'s files; whether anything changed."""
        self._directories = {str(d) for d in scan.directories}
        gone: dict[str, Stamp | None] = {path: None for path in self._seen.keys() - scan.files}
        return self._refresh({**scan.files, **gone})

    def _refresh(self, files: dict[str, Stamp | None]) -> bool:
        changed = False
        for path in sorted(files):
            stamp = files[path]
            if stamp is not None and self._seen.get(path) == stamp:
                continue
            if stamp is None and path not in self._seen:
                continue
            changed = True
            if stamp is None:
                self._forget(path)
            else:
                self._seen[path] = stamp
                self._read(path, stamp)
        if len(self._seen) > self.limits.files:
            raise TooMuch(f"more than {self.limits.files} manifest files (--max-files)")
        if self._definitions.count > self.limits.objects:
            raise TooMuch(f"more than {self.limits.objects} objects (--max-objects)")
        return changed

    def _forget(self, path: str) -> None:
        self._definitions.replace(path, self._files.pop(path, []), [])
        self._seen.pop(path, None)
        self._parsed.pop(path, None)
        self._errors.pop(path, None)
        self._notes.pop(path, None)

    def _read(self, path: str, stamp: Stamp) -> None:
        """Parse one file; one that cannot be used keeps its last good objects."""
        source = os.path.relpath(path, self.directory)
        self._errors.pop(path, None)
        try:
            loaded = self._parse(path, source, stamp)
        except UnicodeDecodeError as exc:
            self._errors[path] = f"{source}: not UTF-8 text (invalid byte at offset {exc.start})"
        except ValueError as exc:
            self._errors[path] = str(exc)
        except OSError as exc:
            self._errors[path] = f"{source}: cannot be read: {exc.strerror}"
        else:
            _keep(self._notes, path, loaded.errors)
            self._definitions.replace(path, self._files.get(path, []), loaded.objects)
            self._files[path] = loaded.objects
            return
        self._notes.pop(path, None)  # the error alone: the notes were of another content

    def _loaded(self) -> Loaded:
        errors = []
        for path in sorted({*self._errors, *self._notes}):
            errors += self._notes.get(path, [])
            if path in self._errors:
                errors.append(self._errors[path])
        index = dict(self._definitions.objects)
        loaded = Loaded(list(index.values()), errors + self._definitions.errors(), index)
        if self._last is not None:
            self._last.follows = None  # a link to the one before only: no chain kept alive
        loaded.follows, loaded.changed = self._last, frozenset(self._definitions.touched)
        self._definitions.touched.clear()
        self._last = loaded
        return loaded

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

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem:
                log.error("%s", problem)
            else:
                log.info("manifests %s readable again", self.directory)
        self.problem = problem

    async def watch(self) -> AsyncIterator[Loaded]:
        """The objects now, then again after every change: inotify wakes us at once and
        names the files to read. The safety walk (every SAFETY_POLL) runs in a worker thread
        beside the change path, not in front of it: a change is never kept waiting for a
        walk, and a walk made while a change was read is stale and made again. Where
        inotify is missing, a full look every POLL_INTERVAL is all there is."""
        watcher = DirectoryWatcher()
        loop = asyncio.get_running_loop()
        last = -BURST_GAP
        walk: asyncio.Task[tuple[int, Scan | None]] | None = None
        looked = await asyncio.to_thread(self.look)
        try:
            while True:
                if looked is not None:
                    if looked[0] is not None:
                        watcher.watch(looked[0].directories)
                    if looked[1] is not None:
                        last = loop.time()
                        yield looked[1]
                if not watcher.active:
                    await asyncio.sleep(POLL_INTERVAL)
                    looked = await asyncio.to_thread(self.look)
                    continue
                walk = walk or asyncio.create_task(self._walk(SAFETY_POLL))
                woke = asyncio.create_task(watcher.ready(SAFETY_POLL))
                await asyncio.wait({woke, walk}, return_when=asyncio.FIRST_COMPLETED)
                woke.cancel()  # consumes nothing: a change stays pending for `take`
                if watcher.pending:
                    # Leading edge at once; the rest of a burst coalesces into one reload.
                    await asyncio.sleep(max(0.0, last + BURST_GAP - loop.time()))
                    looked = await self._look_at(watcher.take())
                elif walk.done():
                    looks, walked = walk.result()
                    stale = looks != self._looks
                    walk = asyncio.create_task(self._walk(STALE_WALK if stale else SAFETY_POLL))
                    looked = None if stale else await asyncio.to_thread(self.look, None, walked)
                else:
                    looked = None
        finally:
            if walk is not None:
                walk.cancel()
            watcher.close()

    async def _look_at(self, changes: Changes) -> tuple[Scan | None, Loaded | None] | None:
        """Named files under INLINE_BYTES in all are read here, the rest in a worker thread;
        each is stat'ed once, here."""
        named = self._named(changes)
        if named is not None and sum(s[0] for s in named.values() if s) <= INLINE_BYTES:
            return self._settle(named)
        return await asyncio.to_thread(self._settle, named)

    async def _walk(self, delay: float) -> tuple[int, Scan | None]:
        """After `delay`, the walk over the tree (None: it failed, a look will say why),
        with the number of looks it started after."""
        await asyncio.sleep(delay)
        looks = self._looks
        try:
            return looks, await asyncio.to_thread(self.scan)
        except (OSError, TooMuch):
            return looks, None


def _keep(table: dict[str, list[str]], path: str, errors: list[str]) -> None:
    """Only files with something to say are kept: the errors are collected per change."""
    if errors:
        table[path] = errors
    else:
        table.pop(path, None)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the directory is missing"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)

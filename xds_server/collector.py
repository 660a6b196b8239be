"""Keeping Python's cyclic garbage collector from stalling the event loop.

Reading a 10,000-path Ingress allocates some 100,000 objects that all live on; the collector,
triggered by the allocations, walks them again and again while holding the interpreter lock:
measured, the event loop stood still for 110-230 ms per walk, although the work runs in a
worker thread. So the heavy steps run with the collector paused (what they build has no
reference cycles to collect), and what a published snapshot holds is frozen out of the
collector's sight (`gc.freeze`), as the process did for its first snapshot already.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_pauses = 0


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while any thread is inside (nestable, thread-safe)."""
    global _pauses
    with _lock:
        _pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0:
                gc.enable()


def settle() -> None:
    """After a publish: everything alive now is config that lives until the next change;
    keep the collector from walking it (freed by reference counting when replaced)."""
    gc.freeze()

"""The cyclic garbage collector, set for a long-running server once it is ready.

By then the heap holds everything startup made (modules, aiohttp's and the SDKs'
objects, the config): hundreds of thousands of objects that live as long as the
process. CPython's full collections walk all of them whenever enough objects have
survived the younger generations, which under traced load meant a pause of several
milliseconds every few thousand requests (p99 9 ms, against 17 ms, in
``benchmarks/proxy_overhead.py --telemetry trace100``). ``gc.freeze`` moves that heap
out of the collector's sight for good. A first generation larger than the default 700
allocations makes young collections rarer; what each one walks is the objects of the
requests in flight, which the concurrency bounds, not the threshold.

Nothing here changes what is collected: cycles made while serving are found as before.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 20_000
"""Allocations (less deallocations) of tracked objects between young collections."""


def settle() -> None:
    """Collect what startup left over, freeze the rest, and widen the young generation."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

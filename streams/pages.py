"""Pages of a spooled payload's file mapping, given back once an array over them has been read.

A large payload is reassembled in an unlinked temporary file and handed over as a read-only
mapping of it (`streams.framing`), and the arrays decoded from it are views of that mapping: no
copy on the heap. Reading such an array maps its pages into the process, though, so a pass
over a whole 40 MB update would still add 40 MB to the reader's resident memory until the
update is dropped. A reader that goes through an array once, a block at a time (the
aggregator's fold), calls `release` after each block: the block's pages leave the process
(they stay in the kernel's page cache, and a later read maps them again from there).

Giving pages back is always safe here: the mapping is shared, read-only and of a file, so
nothing is lost, whatever else still holds a view of the same bytes.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np

_PAGE = mmap.PAGESIZE
# A read fault on a file mapping also maps cached pages around it: a fault-around window (64 KiB
# by default) or, on recent kernels, the whole large folio the page is in (up to 2 MiB, e.g. one
# per 1 MiB chunk written to the spool file). So the first fault of a block maps again pages of
# blocks given back before it, and each release reaches this far back too (measured on Linux
# 6.18: without reaching back, 23 % of an update stayed resident after a pass, 17 % with a
# 64 KiB reach, none with this).
_REACH_BACK = 2 * 1024 * 1024


class FilePages:
    """Where a flat array lies in the file mapping it views."""

    def __init__(self, mapping: mmap.mmap, offset: int, itemsize: int) -> None:
        self._mapping = mapping
        self._offset = offset  # of the array's first byte, from the mapping's first
        self._itemsize = itemsize
        self._size = len(mapping)

    @classmethod
    def of(cls, flat: np.ndarray[Any, Any]) -> FilePages | None:
        """The pages under `flat` (a contiguous 1-D array), or None if it is not a view of a mapping."""
        owner: object = flat
        while isinstance(owner, np.ndarray):
            owner = owner.base
        while isinstance(owner, memoryview):
            owner = owner.obj
        if (not isinstance(owner, mmap.mmap) or not flat.flags.c_contiguous or len(owner) == 0
                or not hasattr(mmap, "MADV_DONTNEED")):  # no madvise (Windows): pages stay mapped
            return None
        start = np.frombuffer(owner, dtype=np.uint8).ctypes.data
        return cls(owner, flat.ctypes.data - start, flat.itemsize)

    def release(self, start: int, stop: int) -> None:
        """Give back the pages holding elements [start, stop), and those up to _REACH_BACK before
        them (whatever else lies there is read back from the file if it is needed)."""
        first = max(0, (self._offset + start * self._itemsize - _REACH_BACK) // _PAGE * _PAGE)
        end = min(self._size, -(-(self._offset + stop * self._itemsize) // _PAGE) * _PAGE)
        if end > first:
            self._mapping.madvise(mmap.MADV_DONTNEED, first, end - first)


def blocks(flat: np.ndarray[Any, Any], size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each `size`-element block of `flat`, in order; after each block is
    processed (when the next is asked for), its pages are given back if `flat` views a mapping."""
    pages = FilePages.of(flat)
    for start in range(0, flat.size, size):
        stop = min(start + size, flat.size)
        yield start, stop
        if pages is not None:
            pages.release(start, stop)

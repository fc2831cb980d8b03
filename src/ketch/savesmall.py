"""A small file, read for a save: its bytes and its metadata in one visit.

The save's walk pays per file in Python and in system calls (each of which
hands the GIL to the thread storing big files and waits to get it back), so
a small file costs as few as bup's data needs: one open, one read that shows
the end of the file (the known size + 1), its Linux attributes and xattrs
through the same descriptor, one close, and the lstat that tells whether the
file changed while it was read.
"""

from __future__ import annotations

import os

from ketch.fsmeta import Warn, from_path
from ketch.metadata import Metadata
from ketch.savepipe import changed_warning, open_for_save


def read_small(path: bytes, st: os.stat_result, warn: Warn) -> tuple[bytes, Metadata] | None:
    """A small file's whole content and its metadata (hard link target unset:
    the caller decides it); None (and a warning) when it cannot be read."""
    try:
        fd = open_for_save(path)
    except OSError as e:
        warn(f"{os.fsdecode(path)}: {e.strerror}; skipped")
        return None
    try:
        # Ask for the known size + 1: a short read is the end of the file; a
        # plain read(8 MiB) would allocate 8 MiB per file.
        want = st.st_size + 1
        data = os.read(fd, want)
        if not st.st_size <= len(data) < want:  # it grew or shrank: read to its end
            parts = [data]
            while piece := os.read(fd, 1 << 16):
                parts.append(piece)
            data = b"".join(parts)
        meta = from_path(path, st, warn=warn, fd=fd)
    except OSError as e:
        warn(f"{os.fsdecode(path)}: read error: {e.strerror}; skipped")
        return None
    finally:
        os.close(fd)
    changed = changed_warning(path, st, len(data))
    if changed is not None:
        warn(changed)
    return data, meta

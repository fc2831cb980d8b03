"""What a restore does with what is already at a path it restores to.

By default it overwrites, as bup and restic do, but counts every existing
entry it replaces and names it to an `on_overwrite` callback (`restore -v`
lists them); with `no_clobber` an existing entry is kept, counted and named
instead. A directory already where a directory goes is merged into. A
non-empty directory is never deleted: the item that would replace it is not
restored, and the reason says so.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass


class InTheWay(Exception):
    """Something that must not be removed is where the item goes; the message
    is the reason, e.g. "a non-empty directory is in the way"."""


class Kept(Exception):
    """--no-clobber: the existing entry stays and the item is skipped."""


@dataclass
class Clobber:
    no_clobber: bool = False
    on_overwrite: Callable[[bytes], None] | None = None
    on_keep: Callable[[bytes], None] | None = None
    overwritten: int = 0
    kept: int = 0

    def make_way(self, path: bytes, want_dir: bool) -> os.stat_result | None:
        """Clear `path` for a new entry: the stat of a directory to merge into
        (when a directory is wanted), else None once nothing is there. Raises
        Kept (the existing entry stays) or InTheWay."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and want_dir:
            return st
        if self.no_clobber:
            self.kept += 1
            if self.on_keep is not None:
                self.on_keep(path)
            raise Kept(path)
        if is_dir:
            try:
                os.rmdir(path)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise InTheWay("a non-empty directory is in the way") from e
                raise
        else:
            os.unlink(path)
        self.overwritten += 1
        if self.on_overwrite is not None:
            self.on_overwrite(path)
        return None

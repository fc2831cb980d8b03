"""Which paths a walk leaves out: globs, regexes, marker files, other filesystems.

A glob without '/' matches a name anywhere in the tree (`*.tmp`, `.cache`); a glob
with '/' matches a whole absolute path, or a directory prefix of one (`/var/tmp`,
`/home/*/.cache`). Regexes (`--exclude-rx`) are searched in the absolute path,
with '/' appended for directories, as bup does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field

from ketch.errors import UsageError


@dataclass
class ExcludeRules:
    globs: list[str] = field(default_factory=list)
    regexes: list[str] = field(default_factory=list)
    if_present: list[str] = field(default_factory=list)
    one_file_system: bool = False

    def __post_init__(self) -> None:
        self._name_globs = [g.encode() for g in self.globs if "/" not in g.rstrip("/")]
        self._path_globs = [
            g.rstrip("/").encode() for g in self.globs if "/" in g.rstrip("/")
        ]
        try:
            self._rx = [re.compile(os.fsencode(r)) for r in self.regexes]
        except re.error as e:
            raise UsageError(f"bad --exclude-rx pattern: {e}") from None
        self._markers = [os.fsencode(m) for m in self.if_present]

    @classmethod
    def build(cls, globs: list[str], exclude_from: list[str], regexes: list[str],
              if_present: list[str], one_file_system: bool) -> ExcludeRules:
        all_globs = list(globs)
        for path in exclude_from:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    all_globs += [ln.strip() for ln in f
                                  if ln.strip() and not ln.lstrip().startswith("#")]
            except OSError as e:
                raise UsageError(f"--exclude-from {path}: {e.strerror}") from None
        return cls(all_globs, list(regexes), list(if_present), one_file_system)

    def merged(self, other: ExcludeRules) -> ExcludeRules:
        return ExcludeRules(
            self.globs + [g for g in other.globs if g not in self.globs],
            self.regexes + [r for r in other.regexes if r not in self.regexes],
            self.if_present + [m for m in other.if_present if m not in self.if_present],
            self.one_file_system or other.one_file_system,
        )

    def as_dict(self) -> dict[str, object]:
        return {"globs": self.globs, "regexes": self.regexes, "if_present": self.if_present,
                "one_file_system": self.one_file_system}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ExcludeRules:
        def strs(key: str) -> list[str]:
            v = d.get(key) or []
            return [str(x) for x in v] if isinstance(v, list) else []
        return cls(strs("globs"), strs("regexes"), strs("if_present"),
                   bool(d.get("one_file_system")))

    def key(self) -> str:
        """A stable text naming these rules (stored with trees built under them)."""
        return json.dumps(self.as_dict(), sort_keys=True)

    def __bool__(self) -> bool:
        return bool(self.globs or self.regexes or self.if_present or self.one_file_system)

    def excluded(self, path: bytes, name: bytes, is_dir: bool) -> bool:
        for g in self._name_globs:
            if fnmatch.fnmatchcase(name, g):
                return True
        for g in self._path_globs:
            if fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path, g + b"/*"):
                return True
        if self._rx:
            p = path + b"/" if is_dir else path
            if any(r.search(p) for r in self._rx):
                return True
        return False

    def has_marker(self, dir_path: bytes) -> bool:
        return any(os.path.lexists(os.path.join(dir_path, m)) for m in self._markers)

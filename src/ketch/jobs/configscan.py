"""Where each key of a config file is: a scanner over the (already valid) TOML text.

tomllib gives no line numbers, so that messages can name the line of the key
they are about, `KeyLines(text).lines` maps each key's place in the document
(("dump", 0, "type")) to its line.  `toml_str` quotes a string the other way.
"""

from __future__ import annotations

import re
import tomllib

Path = tuple[str | int, ...]  # a key's place in the document: ("dump", 0, "type")

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ARRAY_START = re.compile(r"[ \t]*\[")


def _skip_string(s: str, i: int) -> int:
    """The index just past the string literal starting at s[i]."""
    q = s[i]
    if s.startswith(q * 3, i):
        j = i + 3
        while not s.startswith(q * 3, j):
            j += 2 if q == '"' and s[j] == "\\" else 1
        end = j + 3
        while end < len(s) and s[end] == q and end < j + 5:  # `""""` ends with a quote inside
            end += 1
        return end
    j = i + 1
    while s[j] != q:
        j += 2 if q == '"' and s[j] == "\\" else 1
    return j + 1


def _parse_key(s: str, i: int) -> tuple[list[str], int]:
    parts: list[str] = []
    while True:
        while s[i] in " \t":
            i += 1
        if s[i] in "\"'":
            end = _skip_string(s, i)
            parts.append(tomllib.loads(f"k = {s[i:end]}")["k"])  # decodes escapes exactly
            i = end
        else:
            m = BARE_KEY.match(s, i)
            if m is None:
                return parts, i
            parts.append(m.group())
            i = m.end()
        while i < len(s) and s[i] in " \t":
            i += 1
        if i >= len(s) or s[i] != ".":
            return parts, i
        i += 1


class KeyLines:
    """Line numbers of keys, tables and array elements (tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.s = text + "\n"
        self.line = 1
        self.lines: dict[Path, int] = {}
        self._arrays: dict[Path, int] = {}  # array-of-tables path -> tables seen so far
        self._scan()

    def _mark(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)

    def _scan(self) -> None:
        s, i = self.s, 0
        table: Path = ()
        while i < len(s):
            c = s[i]
            if c in " \t\r":
                i += 1
            elif c == "\n":
                self.line += 1
                i += 1
            elif c == "#":
                i = s.index("\n", i)
            elif c == "[":
                array = s.startswith("[[", i)
                keys, i = _parse_key(s, i + (2 if array else 1))
                table = self._header(keys, array)
                i = s.index("\n", i)
            else:
                keys, i = _parse_key(s, i)
                if not keys:  # not a key line; tomllib accepted the file, so skip it
                    i = s.index("\n", i)
                    continue
                for n in range(1, len(keys) + 1):
                    self._mark(table + tuple(keys[:n]))
                i = self._value(s, s.index("=", i) + 1, table + tuple(keys))

    def _header(self, keys: list[str], array: bool) -> Path:
        path: Path = ()
        for n, key in enumerate(keys):
            path += (key,)
            if array and n == len(keys) - 1:
                self._mark(path)
                self._arrays[path] = self._arrays.get(path, 0) + 1
                path += (self._arrays[path] - 1,)
            elif path in self._arrays:  # [set.sub] after [[set]]: the latest element
                path += (self._arrays[path] - 1,)
        self._mark(path)
        return path

    def _value(self, s: str, i: int, path: Path) -> int:
        """Skip a value (which may span lines), marking the lines of a top array's items."""
        depth, item, expect_item = 0, 0, False
        in_array = _ARRAY_START.match(s, i) is not None  # (not an inline table's commas)
        while True:
            c = s[i]
            if c == "\n" and depth == 0:
                return i
            if depth == 1 and expect_item and c not in " \t\r\n#,]":
                self._mark(path + (item,))
                item, expect_item = item + 1, False
            if c == "\n":
                self.line += 1
            elif c == "#":
                i = s.index("\n", i) - 1
            elif c in "\"'":
                start = i
                i = _skip_string(s, i) - 1
                self.line += s.count("\n", start, i)
            elif c in "[{":
                depth += 1
                expect_item = depth == 1 and c == "["
            elif c in "]}":
                depth -= 1
            elif c == "," and depth == 1 and in_array:
                expect_item = True
            i += 1


def toml_str(s: str) -> str:
    """`s` as a TOML basic string, quoted and escaped."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\t":
            out.append("\\n" if ch == "\n" else "\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'

"""Imports run one way (git -> split/index/metadata -> repo -> save/restore/vfs
-> remote/offsite/jobs -> cli), and only cli talks to the terminal.

Every module's imports are read from its source (ast), those inside functions
and under TYPE_CHECKING too: a lazy import is still a dependency. A module may
import its own layer and those below, never one above. Below cli nothing
prints: what a user should hear goes through a `Progress` (warn), a returned
result or an exception, and cli renders it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "ketch"

# Every top-level module and package of ketch, with its layer. A package's
# modules share its layer; a dotted key (e.g. "remote.spec") would place one
# module of a package apart, the longest key wins.
LAYERS: dict[str, int] = {
    # 0: the ground everything stands on; imports nothing of ketch above it.
    "": 0,  # ketch/__init__.py: the version
    "errors": 0,
    "lease": 0,  # a save's claim that gc waits for
    "vint": 0,
    "text": 0,
    "progress": 0,
    "forkmsg": 0,  # pickled messages to and from forked children
    "interrupt": 0,  # git/pack.py holds its signals while it writes
    "timeparse": 0,
    "excludes": 0,
    # 1: git objects, packs, indexes and refs on disk.
    "git": 1,
    # 2: what is built from git objects: chunks, the save cache, metadata records.
    "split": 2,
    "index": 2,
    "metadata": 2,
    "commits": 2,  # commit objects and their messages, the way bup writes them
    "rollsum": 2,  # the rolling-checksum kernel under split
    "buptree": 2,  # bup's tree format: name mangling, chunk trees, .bupm + tree
    "fsmeta": 2,  # metadata records read from and applied to paths
    "posixacl": 2,
    "idmap": 2,  # user and group names <-> ids
    # 3: the Repository interface and the local repository.
    "repo": 3,
    "localrepo": 3,
    # 4: what is done with a repository.
    "save": 4,
    "savepipe": 4,  # big files stored on a worker thread beside save's walk
    "savefork": 4,  # big files stored by a forked child (its own GIL)
    "savesmall": 4,  # a small file's bytes and metadata in one visit
    "archive": 4,  # where each saved path goes in the archive (strip, graft)
    "snapshot": 4,  # write a tree, commit it, move the branch: save, split and dumps
    "stream": 4,  # split and join of a byte stream
    "restore": 4,
    "restoreplan": 4,  # what restore does with what is in the way
    "restorefile": 4,  # one file's sparse, gathered writes
    "restorebatch": 4,  # files written in batches, blobs read in pack order
    "restoreworkers": 4,  # the batches read and written by forked workers
    "vfs": 4,
    "listing": 4,
    "mount": 4,  # the vfs as a FUSE filesystem  # ls's lines, from the vfs
    "lifecycle": 4,  # prune and gc: retention, and space given back
    "integrity": 4,  # fsck, parity (par2) and repair
    "reportlog": 4,  # run, drill, mirror and fsck reports kept in the repository
    # 5: repositories elsewhere, and the machine's jobs.
    "remote": 5,
    "offsite": 5,
    "jobs": 5,
    "web": 5,  # the dashboard: reads repositories, their reports and the vfs
    # 6: the command line.
    "cli": 6,
    "__main__": 6,
}
CLI = 6
LAYER_NAMES = ["base (errors, text, progress...)", "git", "split/index/metadata", "repo",
               "save/restore/vfs", "remote/offsite/jobs", "cli"]

# Upward imports that stay for now, each with its reason: (importer, imported).
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

# Terminal output below cli that stays for now: (module, what) -> reason.
KNOWN_PRINTS: dict[tuple[str, str], str] = {
    # logging's last-resort handler writes these to stderr, without `ketch:
    # warning:` and past any meter; they belong with the caller's warnings. The
    # callers have no Progress to hand there yet.
    ("ketch.offsite.keyfile", "log.warning"): "a key file readable by others",
    ("ketch.offsite.cache", "log.warning"): "a cache file that cannot be written",
    ("ketch.offsite.s3multipart", "log.warning"):
        "a resumed upload found stale and started over",
}

# Streams and libraries that are the terminal's: only cli touches them.
_STREAMS = {"stdout", "stderr", "__stdout__", "__stderr__"}
_TERMINAL_LIBRARIES = {"click", "rich"}
# Logging at these levels reaches stderr (the last-resort handler) when nothing
# is configured, as in every ketch command; debug and info stay silent.
_LOUD_LOG_LEVELS = {"warning", "warn", "error", "exception", "critical", "fatal", "log"}


@dataclass(frozen=True)
class Module:
    name: str  # "ketch.git.pack"
    path: Path
    tree: ast.Module

    @property
    def key(self) -> str:
        """Its place in LAYERS: "git.pack", "" for ketch/__init__.py."""
        return self.name.removeprefix("ketch").removeprefix(".")


def modules() -> Iterator[Module]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield Module(".".join(parts), path, ast.parse(path.read_text(), str(path)))


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(m: Module) -> Iterator[tuple[int, str]]:
    """(line, module) for every ketch module `m` imports, wherever the import is."""
    package = m.name if m.path.name == "__init__.py" else m.name.rpartition(".")[0]
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from ketch.git import objects` imports a module, `from ketch
                # import __version__` a name of the package.
                sub = f"{source}.{alias.name}"
                yield node.lineno, sub if _is_module(sub) else source
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module")):
            yield node.lineno, node.args[0].value


def layer(name: str) -> int | None:
    """The layer of ketch module `name` (None: not in the table)."""
    key = name.removeprefix("ketch").removeprefix(".")
    while key not in LAYERS:
        if "." not in key:
            return None  # a top-level module no entry places ("" is ketch itself only)
        key = key.rpartition(".")[0]
    return LAYERS[key]


def _top(name: str) -> str:
    return name.removeprefix("ketch").removeprefix(".").split(".")[0]


def test_every_module_has_a_layer() -> None:
    missing = sorted({m.name for m in modules() if _top(m.name) not in LAYERS})
    assert not missing, (
        f"{', '.join(missing)}: not placed in a layer. Add the module (or its package) to "
        f"LAYERS in {__file__}: in the layer of what it does, which is no lower than "
        "what it imports and no higher than what imports it")
    stale = sorted(k for k in LAYERS if k and not _is_module(f"ketch.{k}"))
    assert not stale, f"LAYERS places modules that no longer exist: {', '.join(stale)}"


def test_imports_run_downward() -> None:
    upward = []
    seen = set()
    for m in modules():
        mine = layer(m.name)
        if mine is None:
            continue  # test_every_module_has_a_layer says so
        for line, imported in imports(m):
            if imported != "ketch" and not imported.startswith("ketch."):
                continue
            theirs = layer(imported)
            pair = (m.name, imported)
            if theirs is not None and theirs > mine:
                seen.add(pair)
                if pair not in KNOWN_UPWARD:
                    upward.append(f"{m.path.relative_to(PACKAGE.parent)}:{line}: {m.name} "
                                  f"({LAYER_NAMES[mine]}) imports {imported} "
                                  f"({LAYER_NAMES[theirs]})")
    assert not upward, ("imports that run upward (move what is needed down to the layer "
                        "that uses it, or pass it in from above):\n" + "\n".join(upward))
    stale = sorted(set(KNOWN_UPWARD) - seen)
    assert not stale, f"KNOWN_UPWARD lists imports that are gone (delete them): {stale}"


def _loggers(tree: ast.Module) -> set[str]:
    """Module-level names bound to `logging.getLogger(...)`."""
    names: set[str] = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func) == "logging.getLogger"):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def terminal_output(m: Module) -> Iterator[tuple[int, str]]:
    """(line, what) for each way `m` reaches the terminal by itself."""
    loggers = _loggers(m.tree) | {"logging"}
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("print", "input", "breakpoint"):
                yield node.lineno, func.id
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if func.value.id in loggers and func.attr in _LOUD_LOG_LEVELS:
                    yield node.lineno, f"{func.value.id}.{func.attr}"
                elif ast.unparse(func) == "warnings.warn":
                    yield node.lineno, "warnings.warn"
                elif (ast.unparse(func) == "os.write" and node.args
                      and isinstance(node.args[0], ast.Constant) and node.args[0].value in (1, 2)):
                    yield node.lineno, f"os.write({node.args[0].value}, ...)"
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "sys" and node.attr in _STREAMS):
            yield node.lineno, f"sys.{node.attr}"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            for name in names:
                if name.split(".")[0] in _TERMINAL_LIBRARIES:
                    yield node.lineno, f"import {name}"


def test_core_does_not_print() -> None:
    found = []
    seen = set()
    for m in modules():
        if (layer(m.name) or 0) >= CLI:
            continue
        for line, what in terminal_output(m):
            seen.add((m.name, what))
            if (m.name, what) not in KNOWN_PRINTS:
                found.append(f"{m.path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not found, ("core code reaching the terminal (give it to a Progress's warn, "
                       "return it, or raise it; cli renders):\n" + "\n".join(found))
    stale = sorted(set(KNOWN_PRINTS) - seen)
    assert not stale, f"KNOWN_PRINTS lists output that is gone (delete it): {stale}"


def test_the_checks_catch_what_they_are_for() -> None:
    """The readers above, on made-up modules: an upward import inside a function,
    a relative one, and each way of printing are all seen."""
    def module(name: str, source: str) -> Module:
        return Module(name, PACKAGE / "git" / "made_up.py", ast.parse(source))

    lazy = module("ketch.git.made_up", "def f():\n    from ketch.repo import Repository\n")
    relative = module("ketch.git.made_up", "from ..save import save\nfrom . import objects\n")
    assert [(n, layer(i)) for n, i in imports(lazy)] == [(2, 3)]
    assert sorted(imports(relative)) == [(1, "ketch.save"), (2, "ketch.git.objects")]
    noisy = module("ketch.git.made_up", (
        "import logging, sys, os\nimport click\nlog = logging.getLogger(__name__)\n"
        "print('x')\nclick.echo('x')\nsys.stderr.write('x')\nlog.warning('x')\n"
        "log.debug('quiet')\nos.write(2, b'x')\n"))
    assert sorted(w for _, w in terminal_output(noisy)) == [
        "import click", "log.warning", "os.write(2, ...)", "print", "sys.stderr"]
    assert layer("ketch.remote.location") == 5 and layer("ketch") == 0
    assert layer("ketch.made_up") is None

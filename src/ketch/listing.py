"""What `ls` shows at the top of a repository: its branches."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ketch.git import objects as gobj
from ketch.repo import Repository


@dataclass
class Branch:
    name: str
    commit: bytes
    author_time: int

    @property
    def date_text(self) -> str:
        return time.strftime("%Y-%m-%d-%H%M%S", time.localtime(self.author_time))

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "commit": self.commit.hex(),
                "latest": self.date_text, "time": self.author_time}


def list_branches(repo: Repository) -> list[Branch]:
    rows = []
    for ref, oid in repo.iter_refs(b"refs/heads/"):
        t, data = repo.read(oid)
        when = gobj.decode_commit(data).author_time if t == gobj.COMMIT else 0
        rows.append(Branch(ref[len(b"refs/heads/"):].decode("utf-8", "surrogateescape"), oid, when))
    return rows

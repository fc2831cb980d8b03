"""Whether an encryption key has a second copy away from where it is used.

A bucket's key (a machine's `encrypt_key`) or a mirror's key (the backup
server's `[mirror] encrypt_key`) kept only where it is used is lost with that
machine, and with it everything in the bucket: nobody, ketch included, can
read it. The config says where the second copy is (`encrypt_key_copy`, or
`[mirror] key_copy`):

- an absolute path (a mounted USB stick, a share): checked to hold the same
  key, and on another filesystem than the key itself;
- any other text ("printed, in the office safe"): taken at its word.

Nothing said is a warning: the day it matters is too late to find out.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyCopyVerdict:
    level: str  # "ok", "warn" or "fail"
    detail: str


def judge_key_copy(key: str, copy: str | None, where: str, setting: str) -> KeyCopyVerdict:
    """`key`: the key file; `copy`: what the config says of its second copy;
    `where`: where the key is used, for the message ("this machine", "this server");
    `setting`: the config's key that says where the copy is."""
    if not copy:
        return KeyCopyVerdict("warn", f"{key}: its only copy is on {where}: if {where} is "
                                      "lost, what it encrypts cannot be read. Keep a copy "
                                      "elsewhere (a password safe, a printout: it is one line) "
                                      f"and say where: {setting} = \"...\"")
    if not os.path.isabs(copy):
        return KeyCopyVerdict("ok", f"{key}: a copy is kept: {copy} (not checked)")
    try:
        with open(key, "rb") as f:
            mine = f.read(4096)
        with open(copy, "rb") as f:
            theirs = f.read(4096)
        same_disk = os.stat(key).st_dev == os.stat(copy).st_dev
    except FileNotFoundError as e:
        gone = e.filename or copy
        if gone == copy:
            return KeyCopyVerdict("warn", f"{copy}: the key's copy is not there (not mounted?): "
                                          "not checked")
        return KeyCopyVerdict("fail", f"{gone}: no such file")
    except OSError as e:
        return KeyCopyVerdict("fail", f"{e.filename or copy}: {e.strerror or e}")
    if not hmac.compare_digest(mine.strip(), theirs.strip()):
        return KeyCopyVerdict("fail", f"{copy} is not a copy of {key}: it would not read "
                                      "what the key encrypts")
    if same_disk:
        return KeyCopyVerdict("warn", f"{copy} is on the same filesystem as {key}: both are "
                                      "lost together")
    return KeyCopyVerdict("ok", f"{key}: its copy {copy} matches")

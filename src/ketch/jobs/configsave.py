"""The machine's config, saved by every `ketch run` onto branch `ketch-config`:
the day a machine is lost, its new instance gets the config back from the
repository found by the machine's name (`ketch ls -r SERVER:/srv/ketch/web1
ketch-config/latest/`), whether or not one of its sets saves /etc.

What is saved: the config file's directory when that directory is ketch's own
(`/etc/ketch`: the option files and keys put beside the config come back with
it), else the config file alone; and, wherever they are, the files the config
names: dump option, password, URI and environment files, exclude lists, the
mail password file, the bucket's key. They are credentials: the repository
keeps their modes and owners, as a save of /etc would.
"""

from __future__ import annotations

import os
import re

from ketch.jobs.model import Config

CONFIG_SET = "ketch-config"


def _named_files(cfg: Config) -> list[str]:
    out: list[str] = []
    for s in cfg.sets:
        out += s.exclude_from
    for d in cfg.dumps:
        out += [p for p in (d.options_file, d.passfile, d.uri_file, d.env_file) if p]
    if cfg.notify.email is not None and cfg.notify.email.password_file:
        out.append(cfg.notify.email.password_file)
    if cfg.encrypt_key:
        out.append(cfg.encrypt_key)
    return [os.path.abspath(p) for p in out]


def config_paths(cfg: Config) -> list[str]:
    """The absolute paths `ketch run` saves as `ketch-config` (none without a
    config file: a config built in memory has nothing to save)."""
    source = os.path.abspath(cfg.source) if cfg.source else ""
    if not source or not os.path.isfile(source):
        return []
    directory = os.path.dirname(source)
    # /etc/ketch, /etc/ketch-prod: ketch's own; /home/ketchup is not.
    own = re.fullmatch(r"ketch([-_.].*)?", os.path.basename(directory)) is not None
    paths = [directory if own else source]
    for p in _named_files(cfg):
        # A missing file is `ketch config check`'s to report, not the save's.
        if os.path.lexists(p) and not any(p == q or p.startswith(q.rstrip("/") + "/")
                                          for q in paths):
            paths.append(p)
    return paths

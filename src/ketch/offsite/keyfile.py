"""Key files for EncryptedStore (``keygen``, ``save_key``, ``load_key``).

A header line, then the base64 of the 32-byte key; written 0600 and never over
an existing file.
"""

from __future__ import annotations

import logging
import os
import stat as statmod

from ketch.errors import KetchError

log = logging.getLogger(__name__)

KEY_SIZE = 32


class KeyFileError(KetchError):
    """A key file is missing, malformed, or would be overwritten."""


KEY_FILE_HEADER = "# ketch mirror key v1 (AES-256-GCM): without it the mirror cannot be read"


def keygen() -> bytes:
    """32 random bytes: a new master key."""
    return os.urandom(KEY_SIZE)


def save_key(path: str, key: bytes | None = None) -> bytes:
    """Write `key` (default: a new one) to a new file, mode 0600; return the key."""
    import base64

    key = keygen() if key is None else key
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"an encryption key has {KEY_SIZE} bytes, not {len(key)}")
    text = f"{KEY_FILE_HEADER}\n{base64.b64encode(key).decode()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists already; not overwriting a key") from None
    except OSError as e:
        raise KeyFileError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key(path: str, *, strict: bool = False) -> bytes:
    """Read a key file.  A file that group or others may read gets a warning
    (an error when `strict`)."""
    import base64
    import binascii

    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096)
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read key file ({getattr(e, 'strerror', e)})") from None
    if mode & (statmod.S_IRWXG | statmod.S_IRWXO):
        msg = f"{path}: key file is accessible by group or others (chmod 600 it)"
        if strict:
            raise KeyFileError(msg)
        log.warning("%s", msg)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 2 or not lines[0].startswith("# ketch mirror key v1"):
        raise KeyFileError(f"{path}: not a ketch key file (made by 'ketch mirror keygen')")
    try:
        key = base64.b64decode(lines[1], validate=True)
    except binascii.Error:
        raise KeyFileError(f"{path}: key is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"{path}: key has {len(key)} bytes, not {KEY_SIZE}")
    return key

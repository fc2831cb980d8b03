"""Known-answer vectors for the encrypted mirror format (ketch.offsite.encrypt,
version 1), written down: a change to the format that still reads its own
output (key derivation, names, nonces, associated data, header, segments, the
name index) fails here. Keys, names and plaintexts are fixed; the stored
bytes must be these exactly.

If the format changes on purpose, it needs a new version number (old mirrors
must stay readable) and new vectors beside these, not edits to them."""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ketch.offsite.encrypt import EncryptedStore
from ketch.offsite.nameindex import INDEX_KEY
from ketch.offsite.store import DirStore

KEY = bytes(range(32))
KEY_ID = "6c4ecbd76ab23742"
NAMES = {
    "small/manifest.json": "fd528f74244f0866adf5c7ab42e057b66ee0fec96f851032500c3b945c532c59",
    "small/objects/pack/pack-abababababababababababababababababababab.pack":
        "e09446fa8bc95582538ed784d6c849a8cc1ec26146d1d1eb49e8e7607e1dba62",
}
HELLO = bytes.fromhex(
    "4b45544348454e4301000000000100006c4ecbd76ab23742000000000000000d3f6928f21026b7392e12ff08"
    "b19037f9c3cf6bf67906c207e1f20ded5e62a464c213ed297d299dab6f")
EMPTY = bytes.fromhex(
    "4b45544348454e4301000000000100006c4ecbd76ab237420000000000000000a15cc9d414906f23e581f41c"
    "5f97830816d5332aaf569f40eb277f5e")
# 65537 bytes: one full 64 KiB segment and a last one of one byte.
BIG_SIZE = 65625
BIG_SHA256 = "2b496d2ecab4b5b8935c9b0b3e11be1698e31bac2343edf47b474734441ea37f"
BIG_HEAD = ("4b45544348454e4301000000000100006c4ecbd76ab237420000000000010001d52d047636b691b0b740"
            "0de657907b3d")
BIG_TAIL = "082ea5622d1baa289a1a19bb3efa5f5bf37a8749bd2c5ac52c341ec1cec44b925b6949cda21e7f8b"
# The name index after the three puts below, in that order.
INDEX_SIZE = 523
INDEX_HEAD = "4b45544348454e4301000000000100006c4ecbd76ab2374200000000000001cf687ade4e"
INDEX_SHA256 = "df4bf98fbdb440263b64f01d2fa336d8fa81e8dc14ccb0370e9af40912f588d6"


def _big() -> bytes:
    return bytes(i % 251 for i in range(65537))


def test_known_answers(tmp_path: Path) -> None:
    inner = DirStore(str(tmp_path / "bucket"))
    enc = EncryptedStore(inner, KEY)
    assert enc.key_id.hex() == KEY_ID
    for name, hidden in NAMES.items():
        assert enc.inner_key(name) == hidden
    enc.put("a/hello", b"hello, world\n")
    enc.put("a/empty", b"")
    enc.put("a/big", _big())
    assert inner.get(enc.inner_key("a/hello")) == HELLO
    assert inner.get(enc.inner_key("a/empty")) == EMPTY
    big = inner.get(enc.inner_key("a/big"))
    assert len(big) == BIG_SIZE
    assert big[:48].hex() == BIG_HEAD and big[-40:].hex() == BIG_TAIL
    assert hashlib.sha256(big).hexdigest() == BIG_SHA256
    index = inner.get(INDEX_KEY)
    assert len(index) == INDEX_SIZE and index.hex().startswith(INDEX_HEAD)
    assert hashlib.sha256(index).hexdigest() == INDEX_SHA256
    # And the vectors read back.
    fresh = EncryptedStore(inner, KEY)
    assert fresh.get("a/hello") == b"hello, world\n"
    assert fresh.get("a/big", 65535, 65537) == _big()[65535:]
    assert dict(fresh.list("a/")) == {"a/big": 65537, "a/empty": 0, "a/hello": 13}


def test_hello_vector_from_the_primitives() -> None:
    """The documented construction, rebuilt from the cryptography primitives
    alone, gives the stored bytes: the module doc is the format."""
    def subkey(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"ketch offsite v1",
                    info=label).derive(KEY)

    name, plain = "a/hello", b"hello, world\n"
    lp = struct.pack(">I", len(name)) + name.encode()
    nonce = hmac.new(subkey(b"nonces"), lp + hashlib.sha256(plain).digest()
                     + struct.pack(">Q", 0), hashlib.sha256).digest()[:12]
    ad = b"ketch-enc" + struct.pack(">BI", 1, 64 << 10) + lp + struct.pack(">QB", 0, 1)
    header = b"KETCHENC" + struct.pack(">B3xI", 1, 64 << 10) + subkey(b"key id")[:8] \
        + struct.pack(">Q", len(plain))
    stored = header + nonce + AESGCM(subkey(b"encrypt")).encrypt(nonce, plain, ad)
    assert stored == HELLO
    assert hmac.new(subkey(b"names"), b"small/manifest.json", hashlib.sha256).hexdigest() \
        == NAMES["small/manifest.json"]

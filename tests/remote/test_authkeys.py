"""authorized_keys lines read as sshd reads them (sshd(8), AUTHORIZED_KEYS FILE FORMAT)."""

from __future__ import annotations

from ketch.remote.authkeys import parse_line

BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIJx3"


def test_options_with_quoted_commas_spaces_and_escaped_quotes() -> None:
    k = parse_line(f'from="10.0.0.1,10.0.0.2",command="ketch server --restrict-to '
                   f'\'/srv/a b\' \\"x, y\\"",restrict ssh-ed25519 {BLOB} ketch:web 1', 7)
    assert k is not None
    assert (k.number, k.keytype, k.blob, k.comment) == (7, "ssh-ed25519", BLOB, "ketch:web 1")
    assert k.option("from") == "10.0.0.1,10.0.0.2"
    assert k.option("command") == "ketch server --restrict-to '/srv/a b' \"x, y\""
    assert k.restricted_to() == "/srv/a b"
    assert k.option("restrict") is None  # a flag, not name=value


def test_plain_key_comments_and_junk() -> None:
    k = parse_line(f"  ssh-ed25519 {BLOB}  ")
    assert k is not None and k.options == () and k.comment == "" and k.restricted_to() is None
    assert parse_line("") is None
    assert parse_line("   # ssh-ed25519 " + BLOB) is None
    assert parse_line('command="unterminated ssh-ed25519 ' + BLOB) is None
    assert parse_line("not a key line") is None

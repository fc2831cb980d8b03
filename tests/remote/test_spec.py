"""`-r` parsing: bup 0.33's table (bup-format.md 6.1), plus ketch's refusals."""

from __future__ import annotations

import pytest

from ketch.errors import UsageError
from ketch.remote.spec import RemoteSpec, parse_remote


@pytest.mark.parametrize(("text", "want"), [
    ("host:/path", RemoteSpec("ssh", "host", None, "/path")),
    ("user@host:/path", RemoteSpec("ssh", "user@host", None, "/path")),
    ("host:relpath", RemoteSpec("ssh", "host", None, "relpath")),
    ("host:", RemoteSpec("ssh", "host", None, "")),
    (":/path", RemoteSpec("file", None, None, "/path")),
    ("-:/path", RemoteSpec("file", None, None, "/path")),
    ("/path", RemoteSpec("file", None, None, "/path")),
    ("ssh://user@host:2222/path", RemoteSpec("ssh", "user@host", 2222, "/path")),
    ("ssh://host", RemoteSpec("ssh", "host", None, "")),
    # Not bup's: there "/" is the repository, which no key confined by
    # setup-client may use; an empty URL path is the server's default instead.
    ("ssh://host/", RemoteSpec("ssh", "host", None, "")),
    ("ssh://root@host:2222/", RemoteSpec("ssh", "root@host", 2222, "")),
    ("ssh://host:2222", RemoteSpec("ssh", "host", 2222, "")),
    ("file:///tmp/x", RemoteSpec("file", None, None, "/tmp/x")),
    ("ssh://[::1]:22/x", RemoteSpec("ssh", "::1", 22, "/x")),
])
def test_parse_like_bup(text: str, want: RemoteSpec) -> None:
    assert parse_remote(text) == want


@pytest.mark.parametrize(("text", "why"), [
    ("http://host/x", "unexpected protocol"),
    ("bup://host/x", "not supported"),
    ("host:/a\nb", "line break"),
])
def test_refused(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_remote(text)


def test_cache_key_like_bup() -> None:
    # bup-format.md 6.6: every character but [A-Za-z0-9_@] becomes '_'.
    assert parse_remote("fakehost:/tmp/bupspec/rr").cache_key() == "fakehost__tmp_bupspec_rr"
    assert (parse_remote("someuser@fakehost:/tmp/bupspec/rr").cache_key()
            == "someuser@fakehost__tmp_bupspec_rr")
    # Unlike bup, no "None" for a missing host or path: this cache is ketch's own
    # (~/.cache/ketch/remote), which bup never reads.
    assert parse_remote(":/tmp/bupspec/rr2").cache_key() == "__tmp_bupspec_rr2"
    assert parse_remote("fakehost:").cache_key() == "fakehost_"

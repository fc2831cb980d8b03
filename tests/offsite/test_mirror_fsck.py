"""`ketch fsck -r s3://...`: the S3 reader runs mirror verify's check, on the
real SeaweedFS server, and answers in fsck's shape and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.integrity.fsck import FsckRun
from ketch.offsite.manifest import pack_key
from ketch.offsite.push import push
from ketch.remote.location import open_location
from tests.conftest import RunKetch
from tests.offsite.test_mirror import (  # noqa: F401 - fixtures
    Mirror,
    _cache_home,
    _pack_files,
    s3_mirror,
    small_repo,
    small_src,
)


def test_fsck_of_a_mirrored_repository_finds_a_damaged_pack(s3_mirror: Mirror,  # noqa: F811
                                                            small_repo: Path,  # noqa: F811
                                                            run_ketch: RunKetch) -> None:
    push([str(small_repo)], s3_mirror.store)
    url = s3_mirror.repo_url("small")
    with open_location(url) as mirrored:
        assert mirrored.check_integrity(FsckRun(read_data=100))["exit_code"] == 0
        with pytest.raises(KetchError, match="S3 mirror is read-only"):
            mirrored.check_integrity(FsckRun(repair=True))
    bad = pack_key("small", max(n for n in _pack_files(small_repo) if n.endswith(".pack")))
    data = bytearray(s3_mirror.store.get(bad))
    data[len(data) // 2] ^= 0x40
    s3_mirror.store.put(bad, bytes(data))
    out = run_ketch("fsck", "-r", url, "--read-data", "--json", env=s3_mirror.env)
    report = json.loads(out.stdout)
    assert out.returncode == 2 == report["exit_code"]
    assert any(p["message"].startswith(bad) for p in report["problems"]), report
    # A mirror is read-only: the check keeps no record there, and says nothing of it.
    assert not [p for p in report["problems"] if p["what"] == "report"]
    with open_location(url) as mirrored:
        assert mirrored.read_ref(b"refs/ketch/fsck") is None

"""The ``sshd`` fixture is a real OpenSSH server: logins, forced commands, bup over it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunBup
from tests.services.sshd import SSH_KEYGEN, SshServer, forced_command_option


def _ssh(
    sshd: SshServer, key: Path, command: str, *, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*sshd.ssh_argv(key), sshd.host, command],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


def test_plain_key_runs_the_command(sshd: SshServer) -> None:
    key = sshd.new_key("plain")
    proc = _ssh(sshd, key, "echo hi")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"hi\n", b"")
    # Exit codes and stdin travel both ways.
    assert _ssh(sshd, key, "exit 3").returncode == 3
    assert _ssh(sshd, key, "tr a-z A-Z", input=b"shout\n").stdout == b"SHOUT\n"
    # The remote session gets the server's sandbox HOME, not /root.
    assert _ssh(sshd, key, 'printf %s "$HOME"').stdout == os.fsencode(sshd.home)


def test_unknown_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(
        [str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        capture_output=True,
    )
    proc = _ssh(sshd, stranger, "echo hi")
    assert proc.returncode == 255  # ssh's own failure code: auth failed
    assert proc.stdout == b""
    assert b"Permission denied" in proc.stderr


def test_forced_command_replaces_the_request(sshd: SshServer, tmp_path: Path) -> None:
    script = tmp_path / "forced.sh"
    # What a backup server's wrapper does: see the request, decide, exit.
    script.write_text('#!/bin/sh\nprintf "asked for: %s\\n" "$SSH_ORIGINAL_COMMAND"\nexit 42\n')
    script.chmod(0o755)
    key = sshd.new_key("forced", forced_command=str(script))

    proc = _ssh(sshd, key, "echo hi; touch /should-not-exist")
    assert proc.stdout == b"asked for: echo hi; touch /should-not-exist\n"
    assert proc.returncode == 42
    assert not Path("/should-not-exist").exists()


def test_forced_command_quoting(sshd: SshServer, tmp_path: Path) -> None:
    # sshd un-escapes only \" inside command="..."; other backslashes are
    # literal.  The command must reach the shell exactly as written.
    script = tmp_path / "args.sh"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "<%s>\\n" "$a"; done\n')
    script.chmod(0o755)
    command = f'{script} "a\\"b" \'c\\d\' x\\\\y'
    key = sshd.new_key("quoting", forced_command=command)
    proc = _ssh(sshd, key, "ignored")
    local = subprocess.run(["sh", "-c", command], capture_output=True, check=True)
    assert proc.stdout == local.stdout == b'<a"b>\n<c\\d>\n<x\\y>\n'
    with pytest.raises(ValueError):
        forced_command_option("ends in backslash\\")
    with pytest.raises(ValueError):
        forced_command_option("two\nlines")


def test_add_authorized_line(sshd: SshServer, tmp_path: Path) -> None:
    # As `ketch server setup-client` will do: the line is made elsewhere.
    key = tmp_path / "external"
    subprocess.run(
        [str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    public = (tmp_path / "external.pub").read_text().strip()
    sshd.add_authorized_line(f'command="echo from-line",restrict {public}')
    proc = _ssh(sshd, key, "echo asked")
    assert (proc.returncode, proc.stdout) == (0, b"from-line\n")


def test_wrapper_dir_serves_plain_ssh(sshd: SshServer) -> None:
    key = sshd.new_key("wrapped")
    assert sshd.wrapper_dir(key) == sshd.wrapper_dir(key)  # one per key
    proc = subprocess.run(
        ["ssh", "-p", str(sshd.port), sshd.host, "echo via-wrapper"],
        env={**os.environ, "PATH": sshd.path_with_wrapper(key)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, b"via-wrapper\n")


def test_bup_save_ls_restore_over_ssh(
    sshd: SshServer, bup: RunBup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_repo = tmp_path / "server-repo"
    client_dir = tmp_path / "client-bup"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_bytes(b"hello over ssh\n")
    # Large enough for bup to split it into chunks and a real pack transfer.
    big = os.urandom(3 * 1024 * 1024)
    (src / "sub" / "big.bin").write_bytes(big)

    bup(server_repo, "init")
    # The key may only run `bup server`; BUP_DIR stays unset there, as bup's
    # client names the repository itself (set-dir) from the remote URL.
    key = sshd.new_key("bup-server", forced_command="bup server")
    # bup runs plain `ssh [-p PORT] HOST ...` from PATH.
    monkeypatch.setenv("PATH", sshd.path_with_wrapper(key))
    remote = sshd.remote_url(server_repo)
    assert remote == f"ssh://127.0.0.1:{sshd.port}{server_repo}"

    bup(client_dir, "init")
    bup(client_dir, "index", src)
    bup(client_dir, "save", "-r", remote, "-n", "test", src)

    listing = bup(client_dir, "ls", "-r", remote, f"/test/latest{src}/").stdout.split()
    assert sorted(listing) == [b"hello.txt", b"sub"]
    listing = bup(client_dir, "ls", "-r", remote, f"/test/latest{src}/sub").stdout.split()
    assert listing == [b"big.bin"]

    out = tmp_path / "restored"
    bup(client_dir, "restore", "-r", remote, "-C", out, f"/test/latest{src}/.")
    assert (out / "hello.txt").read_bytes() == b"hello over ssh\n"
    assert (out / "sub" / "big.bin").read_bytes() == big

    # The data really is in the server's repository, and it is sound.
    fsck = subprocess.run(
        ["git", "--git-dir", str(server_repo), "fsck", "--full", "--no-progress"],
        capture_output=True,
    )
    assert fsck.returncode == 0, fsck.stderr.decode(errors="replace")
    assert b"error" not in fsck.stderr.lower()
    assert b"forced-command (key-option) 'bup server'" in sshd.log_path.read_bytes()

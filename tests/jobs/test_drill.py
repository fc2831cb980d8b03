"""`ketch drill` against real parts: a machine's config with a set (small files
and a large chunked one), a MariaDB and a PostgreSQL dump from the session's
throwaway servers, an SQLite and a command dump, saved by a real `ketch run`;
the drill then starts throwaway servers of its own from the machine's
binaries. Notifications go to a real local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ketch.jobs.config import ConfigError, load_config, parse_config
from ketch.jobs.drill import run_drill
from ketch.jobs.drillreport import DRILL_REF, read_reports
from ketch.jobs.model import Config
from ketch.jobs.runner import run_jobs
from ketch.jobs.schedule import install, remove, show
from ketch.localrepo import LocalRepository, init_repository
from ketch.vfs import ROOT, VFS
from tests.conftest import RunKetch, _subprocess_env, in_ci
from tests.services.mariadb import MariaDBServer
from tests.services.postgres import PostgresServer

SEED_MYSQL = """
CREATE DATABASE drillshop;
CREATE TABLE drillshop.orders (id INT PRIMARY KEY, item VARCHAR(40)) ENGINE=InnoDB;
INSERT INTO drillshop.orders SELECT seq, CONCAT('item ', seq) FROM drillshop.seq_1_to_250;
CREATE TABLE drillshop.notes (id INT PRIMARY KEY, body TEXT) ENGINE=MyISAM;
INSERT INTO drillshop.notes VALUES (1, 'one'), (2, 'two');
"""


@dataclass
class Pings:
    url: str = ""
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def pings() -> Iterator[Pings]:
    state = Pings()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            state.paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/check"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass
class Machine:
    root: Path
    config: Path
    cfg: Config
    data: Path


def _write_config(root: Path, repo: Path, data: Path, *, mysql: MariaDBServer,
                  pg: PostgresServer, ping_url: str) -> Path:
    config = root / "ketch.toml"
    config.write_text(f"""repository = "{repo}"
[[set]]
name = "files"
paths = ["{data}"]
[[dump]]
name = "mysql"
type = "mysql"
host = "{mysql.socket}"
user = "root"
databases = ["drillshop"]
[[dump]]
name = "pg"
type = "postgresql"
host = "{pg.host}"
port = {pg.port}
user = "postgres"
databases = ["drillpg"]
[[dump]]
name = "lite"
type = "sqlite"
path = "{root / 'app.sqlite'}"
[[dump]]
name = "ldap"
type = "command"
command = ["printf", "dn: cn=admin\\\\n"]
filename = "ldap.ldif"
[drill]
sample = 1000
[notify]
ping_url = "{ping_url}"
timeout = 5
""")
    return config


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, mariadb_server: MariaDBServer,
            postgres_server: PostgresServer, pings: Pings) -> Machine:
    root = tmp_path_factory.mktemp("machine")
    mariadb_server.sql(SEED_MYSQL)
    postgres_server.psql("CREATE DATABASE drillpg")
    postgres_server.psql("CREATE TABLE stock (id int PRIMARY KEY, qty int); "
                         "INSERT INTO stock SELECT g, g * 2 FROM generate_series(1, 40) g",
                         db="drillpg")
    import sqlite3

    db = sqlite3.connect(root / "app.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(30)])
    db.commit()
    db.close()
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    rng = random.Random(12)
    (data / "large.bin").write_bytes(rng.randbytes(3_000_000))  # a chunk tree
    for i in range(20):
        (data / "sub" / f"f{i}.txt").write_bytes(rng.randbytes(300 + i))
    (data / "changed.txt").write_text("before\n")
    repo = root / "repo"
    init_repository(str(repo))
    config = _write_config(root, repo, data, mysql=mariadb_server, pg=postgres_server,
                           ping_url=pings.url)
    cfg = load_config(str(config))
    report = run_jobs(cfg)
    assert report.exit_code == 0, report.text()
    # Changed after the save: the drill cannot compare it, so it checks its object ids.
    (data / "changed.txt").write_text("after, and longer\n")
    return Machine(root, config, cfg, data)


def _set_only_config(machine: Machine, path: Path, repo: Path) -> Path:
    """The machine's config without its dumps (their servers would only add time)."""
    whole = machine.config.read_text().replace(str(machine.root / "repo"), str(repo))
    path.write_text(whole[:whole.index("[[dump]]")] + whole[whole.index("[notify]"):])
    return path


def _check(report: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    [item] = [i for i in report["items"] if (i["kind"], i["name"]) == (kind, name)]
    return item


def test_clean_drill_passes_and_is_stored(machine: Machine, pings: Pings, tmp_path: Path,
                                          run_ketch: RunKetch) -> None:
    pings.paths.clear()
    report = run_drill(machine.cfg)
    text = report.text()
    assert report.exit_code == 0, text
    d = report.as_dict()
    files = _check(d, "set", "files")
    by_name = {c["name"]: c for c in files["checks"]}
    assert len(by_name) == 22 and files["passed"] == 22 and files["failed"] == 0
    assert by_name[f"{machine.data}/large.bin"]["chunked"]
    assert by_name[f"{machine.data}/large.bin"]["method"] == "compared"
    # Changed since the save: verified by its object ids, not a mismatch.
    assert by_name[f"{machine.data}/changed.txt"]["method"] == "object ids"
    assert by_name[f"{machine.data}/changed.txt"]["ok"]
    [mysql] = _check(d, "dump", "mysql")["checks"]
    assert (mysql["name"], mysql["method"], mysql["ok"]) == ("drillshop.sql", "loaded", True)
    assert mysql["tables"] == {"drillshop.orders": 250, "drillshop.notes": 2}
    assert "drillshop.sql: loaded, 2 tables, 252 rows" in text
    pg = {c["name"]: c for c in _check(d, "dump", "pg")["checks"]}
    assert pg["drillpg.sql"]["tables"] == {"drillpg.public.stock": 40}, text
    [lite] = _check(d, "dump", "lite")["checks"]
    assert lite["method"] == "integrity_check" and lite["tables"] == {"t": 30}
    [ldap] = _check(d, "dump", "ldap")["checks"]
    assert ldap["size"] == 13 and ldap["sha256"] == hashlib.sha256(b"dn: cn=admin\n").hexdigest()
    assert pings.paths == []  # a drill that passed pings nothing

    # Stored on refs/ketch/drill, readable, a chain, invisible to ls, fsck-clean.
    repo = LocalRepository(str(machine.root / "repo"))
    stored = read_reports(repo)
    assert stored[0]["status"] == "OK" and report.stored == repo.read_ref(DRILL_REF).hex()
    config = _set_only_config(machine, tmp_path / "ketch.toml", machine.root / "repo")
    proc = run_ketch("drill", "-q", "--sample", "3", "--config", config)
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr
    again = read_reports(repo)
    assert len(again) == 2 and again[1] == stored[0] and again[0]["sample"] == 3
    names = {i.name for i in VFS(repo).contents(ROOT)}
    assert b"files" in names and not any(b"drill" in n for n in names)
    fsck = subprocess.run(["git", "--git-dir", str(machine.root / "repo"), "fsck", "--strict"],
                          capture_output=True)
    assert fsck.returncode == 0, fsck.stderr


def _damage_blob(repo: Path, oid: str) -> None:
    """Flip a byte inside the compressed data of object `oid` in its pack."""
    for idx in (repo / "objects" / "pack").glob("*.idx"):
        with idx.open("rb") as f:
            shown = subprocess.run(["git", "show-index"], stdin=f, capture_output=True,
                                   check=True).stdout.decode()
        for line in shown.splitlines():
            offset, found = line.split()[:2]
            if found == oid:
                pack = idx.with_suffix(".pack")
                os.chmod(pack, 0o644)
                with pack.open("r+b") as p:
                    p.seek(int(offset) + 6)
                    byte = p.read(1)
                    p.seek(int(offset) + 6)
                    p.write(bytes([byte[0] ^ 0xFF]))
                return
    raise AssertionError(f"{oid} not found in any pack")


def test_corrupted_blob_fails_names_the_file_and_pings_fail(
        machine: Machine, pings: Pings, tmp_path: Path, run_ketch: RunKetch) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(machine.root / "repo", repo)
    config = _set_only_config(machine, tmp_path / "ketch.toml", repo)
    victim = f"{machine.data}/sub/f7.txt"
    oid = subprocess.run(["git", "--git-dir", str(repo), "rev-parse",
                          f"refs/heads/files:{victim.lstrip('/')}"],
                         capture_output=True, check=True, text=True).stdout.strip()
    _damage_blob(repo, oid)
    pings.paths.clear()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_ketch("drill", "--config", config, env={"TMPDIR": str(scratch)})
    out = proc.stdout.decode()
    assert proc.returncode == 2, out + proc.stderr.decode()
    assert f"FAILED {victim}:" in out
    assert "set files" in out and "FAILED" in out.splitlines()[0]
    assert pings.paths == ["/check/fail"]
    assert list(scratch.iterdir()) == []  # what was restored is gone
    stored = read_reports(LocalRepository(str(repo)))[0]
    assert stored["status"] == "FAILED"
    [bad] = [c for c in _check(stored, "set", "files")["checks"] if not c["ok"]]
    assert bad["name"] == victim


def test_config_typo_in_drill_is_a_file_line_message(tmp_path: Path,
                                                     run_ketch: RunKetch) -> None:
    text = ('repository = "/srv/ketch"\n\n[drill]\nsampel = 5\nschedule = "Sunday 4am"\n'
            'sample = 0\n')
    src = str(tmp_path / "k.toml")
    with pytest.raises(ConfigError) as e:
        parse_config(text, src)
    assert str(e.value).splitlines() == [
        f"{src}:4: drill.sampel: unknown key (did you mean 'sample'?)",
        f"{src}:5: drill.schedule: expected [DAY[,DAY...]] HH:MM (e.g. \"Sun 04:00\"; "
        "no day: daily), got 'Sunday 4am'",
        f"{src}:6: drill.sample: expected a number of files, at least 1, got 0",
    ]
    Path(src).write_text(text)
    proc = run_ketch("drill", "--config", src)
    assert proc.returncode != 0
    assert f"{src}:4: drill.sampel: unknown key" in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    cfg = parse_config('repository = "/srv/ketch"\n[drill]\nschedule = "Mon,Thu 03:30"\n', src)
    assert (cfg.drill.schedule, cfg.drill.sample) == ("Mon,Thu 03:30", 100)


def test_schedule_install_writes_the_drill_entry(tmp_path: Path) -> None:
    config = tmp_path / "ketch.toml"
    config.write_text('repository = "/srv/ketch"\n[drill]\nschedule = "Sat 05:15"\n')
    argv = [str(Path(os.sys.executable).resolve()), "-m", "ketch"]
    cron, sdir = tmp_path / "cron.d" / "ketch", tmp_path / "systemd"
    install(str(config), load_config(str(config)).schedule, ketch_argv=argv, cron_path=str(cron),
            systemd_dir=str(sdir), use_systemd=False, drill="Sat 05:15")
    lines = [line for line in cron.read_text().splitlines() if " root " in line]
    assert len(lines) == 2 and lines[1].startswith("15 5 * * 6 root ")
    assert lines[1].endswith(f" drill -q --config {config} >/dev/null")
    # systemd: units of its own beside the nightly run's, removed with them.
    info = install(str(config), load_config(str(config)).schedule, ketch_argv=argv,
                   cron_path=str(cron), systemd_dir=str(sdir), use_systemd=True,
                   run_systemctl=False, drill="Sat 05:15")
    timer = (sdir / "ketch-drill.timer").read_text()
    assert "OnCalendar=Sat *-*-* 05:15:00" in timer and "Unit=ketch-drill.service" in timer
    assert " drill -q --config " in (sdir / "ketch-drill.service").read_text()
    assert not cron.exists() and str(sdir / "ketch-drill.timer") in info.files
    shown = show(str(config), load_config(str(config)).schedule, ketch_argv=argv,
                 cron_path=str(cron), systemd_dir=str(sdir), run_systemctl=False,
                 drill="Sat 05:15")
    assert shown.up_to_date
    # `[drill] enabled = false` later: installing again takes the drill's units away.
    install(str(config), load_config(str(config)).schedule, ketch_argv=argv, cron_path=str(cron),
            systemd_dir=str(sdir), use_systemd=True, run_systemctl=False, drill=None)
    assert sorted(p.name for p in sdir.iterdir()) == ["ketch-backup.service", "ketch-backup.timer"]
    install(str(config), load_config(str(config)).schedule, ketch_argv=argv, cron_path=str(cron),
            systemd_dir=str(sdir), use_systemd=True, run_systemctl=False, drill="Sat 05:15")
    removed = remove(systemd_dir=str(sdir), cron_path=str(cron), run_systemctl=False)
    assert str(sdir / "ketch-drill.timer") in removed.files
    assert list(sdir.iterdir()) == []


class _InterruptMidLoad:
    """The terminal's progress, with the user pressing Ctrl-C while the MariaDB
    dump streams into the drill's throwaway server."""

    wants_totals = True

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        pass

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        if nbytes:
            raise KeyboardInterrupt

    def warn(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


def test_ctrl_c_removes_the_scratch_directory_and_stops_the_server(
        machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    cfg = dataclasses.replace(machine.cfg, sets=[], dumps=[
        d for d in machine.cfg.dumps if d.name == "mysql"])
    with pytest.raises(KeyboardInterrupt):
        run_drill(cfg, progress_for=lambda label: _InterruptMidLoad(), notify=False)
    assert list(tmp_path.iterdir()) == []
    servers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and str(tmp_path).encode() in _cmdline(p)]
    assert servers == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_no_server_binary_is_a_warning_and_the_bytes_are_still_checked(
        machine: Machine, tmp_path: Path) -> None:
    """A machine without mariadbd (here: /usr/sbin hidden by an empty directory
    in a private mount namespace): the dump is not loaded, which the drill says."""
    unshare = shutil.which("unshare")
    empty = tmp_path / "empty"
    empty.mkdir()
    hide = f"mount --bind {empty} /usr/sbin && "
    probe = subprocess.run([unshare or "unshare", "--mount", "sh", "-c", hide + "true"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        why = probe.stderr.decode().strip() if probe else "unshare is not installed"
        if in_ci():
            pytest.fail(f"cannot make a mount namespace ({why}); CI requires it")
        pytest.skip(f"cannot make a mount namespace: {why} (needs root)")
    whole = machine.config.read_text()
    mysql = whole[whole.index("[[dump]]"):whole.index("[[dump]]", whole.index("[[dump]]") + 1)]
    config = tmp_path / "ketch.toml"
    config.write_text(whole[:whole.index("[[set]]")] + mysql)
    assert unshare is not None
    proc = subprocess.run([unshare, "--mount", "sh", "-c", hide + 'exec "$@"', "sh",
                           sys.executable, "-m", "ketch", "drill", "--config", str(config)],
                          capture_output=True, env=_subprocess_env(None), timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out + proc.stderr.decode()
    assert ("warning: skipped loading: no MariaDB server binary on this machine (mariadbd)"
            in out)
    assert "drillshop.sql: checksum, " in out  # its bytes and object ids were checked

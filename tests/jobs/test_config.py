"""The machine config: TOML in, `Config` out, every mistake named by file, line and
key; `render_config` round trips; `ketch config init` writes what `config check`
accepts; `config check` reports each check and exits 0/1/2."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.jobs.config import (
    ConfigError,
    check_config,
    default_config_path,
    load_config,
    parse_config,
)
from ketch.jobs.configinit import parse_set_option, set_name_for
from ketch.jobs.configwrite import render_config
from ketch.jobs.model import (
    BackupSet,
    Config,
    DumpSpec,
    EmailSettings,
    Notify,
    Schedule,
)
from ketch.localrepo import init_repository
from tests.conftest import RunKetch

FULL = Config(
    repository="ssh://backup@server:2222/srv/ketch/web1",
    log_file="/var/log/ketch/web1.log",
    lock_file="/run/lock/ketch-web1.lock",
    compress=6,
    retention={"keep-daily": 7, "keep-weekly": 4, "keep-within": "2d"},
    sets=[
        BackupSet("etc", ["/etc"], retention={"keep-last": 30}),
        BackupSet("home", ["/home/alice with space", '/home/q"uote', "/home/back\\slash",
                           "/home/a-rather-long-directory-name-to-wrap-the-array"],
                  exclude=["*.tmp", "/home/*/.cache"], exclude_from=["/etc/ketch/excludes"],
                  exclude_rx=["^/home/[^/]+/tmp/"], exclude_if_present=[".nobackup"],
                  one_file_system=True),
    ],
    dumps=[
        DumpSpec("mysql", "mysql", databases=["app", "wiki"],
                 options_file="/etc/ketch/mysql.cnf", extra_args=["--skip-lock-tables"]),
        DumpSpec("pg", "postgresql", host="/run/postgresql", port=5433, user="backup",
                 passfile="/etc/ketch/pgpass", globals=False, run_as="postgres",
                 env={"PGSSLMODE": "require", "WEIRD": "tab\there\nnewline"}),
        DumpSpec("mongo", "mongodb", uri_file="/etc/ketch/mongo.uri", databases=["logs"]),
        DumpSpec("app-db", "sqlite", path="/var/lib/app/app.db", retention={}),
        DumpSpec("ldap", "command", command=["sh", "-c", "slapcat -n 1 'x' \"y\""],
                 filename="ldap.ldif", env_file="/etc/ketch/ldap.env"),
    ],
    schedule=Schedule(time="03:15", randomized_delay="1h 30m", enabled=False),
    notify=Notify(ping_url="https://hc-ping.com/0123", on_success=True, timeout=2.5,
                  email=EmailSettings("mail.example.com", ["a@example.com", "b@example.com"],
                                      sender="ketch@web1.example.com", smtp_port=587,
                                      starttls=True, username="ketch",
                                      password_file="/etc/ketch/smtp-password")),
)


def _write(tmp_path: Path, text: str, name: str = "ketch.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def _issues(path: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value).splitlines()


# -- round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("comments", [True, False])
@pytest.mark.parametrize("cfg", [FULL, Config("/var/backups/ketch"),
                                 Config("host:path", sets=[BackupSet("etc", ["/etc"])])])
def test_render_then_load_gives_an_equal_config(tmp_path: Path, cfg: Config,
                                                 comments: bool) -> None:
    path = _write(tmp_path, render_config(cfg, comments=comments))
    assert load_config(path) == dataclasses.replace(cfg, source=path)


def test_rendered_config_documents_unset_keys() -> None:
    text = render_config(Config("/r", sets=[BackupSet("etc", ["/etc"])]))
    assert "# exclude = " in text and "# ping_url = " in text and "# [notify.email]" in text
    assert "# [[dump]]" in text  # an example, since there are no dumps
    assert "# [retention]\n# keep-daily = 7" in text  # retention too, commented out
    bare = render_config(Config("/r"), comments=False)
    assert "#" not in bare


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_abs = _text.map(lambda s: "/" + s)


@settings(max_examples=60, deadline=None)
@given(paths=st.lists(_abs, min_size=1, max_size=4), exclude=st.lists(_text, max_size=3),
       command=st.lists(_text, min_size=1, max_size=4),
       env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), _text,
                           max_size=3))
def test_round_trip_of_arbitrary_strings(paths: list[str], exclude: list[str],
                                         command: list[str], env: dict[str, str]) -> None:
    cfg = Config("/r", sets=[BackupSet("s", paths, exclude=exclude)],
                 dumps=[DumpSpec("d", "command", command=command, env=env)])
    assert parse_config(render_config(cfg), "x") == dataclasses.replace(cfg, source="x")


def test_schema_covers_every_model_field() -> None:
    """A field added to the model must be known to the loader (else a config naming it
    is rejected, and one rendered from a Config holding it does not load back)."""
    from ketch.jobs import config as jc

    tables = {"sets": "set", "dumps": "dump", "sender": "from"}
    for cls, schema in ((Config, jc._TOP), (BackupSet, jc._SET), (DumpSpec, jc._DUMP),
                        (Schedule, jc._SCHEDULE), (Notify, jc._NOTIFY),
                        (EmailSettings, jc._EMAIL)):
        names = {tables.get(f.name, f.name) for f in dataclasses.fields(cls)} - {"source"}
        assert names == set(schema), cls.__name__
    used = {key for keys in jc.DUMP_KEYS.values() for key in keys}
    assert used | set(jc.DUMP_COMMON) == set(jc._DUMP)


# -- where keys are --------------------------------------------------------------------


def test_lines_are_found_past_multiline_values_and_odd_syntax(tmp_path: Path) -> None:
    path = _write(tmp_path, '''
        # [[set]] in a comment, and key = "value" too
        repository = "/r"
        notify.ping_url = "https://example.com/x"   # a dotted key at the top
        [[set]]
        name = "a"
        paths = [
            "/etc",   # a comment with ] and [
            """/multi
        line[x] = 1""",
            'relative',
        ]
        [[set]]
        "name" = "b"
        paths = ["/b"]
        one_file_system = 1
        [[dump]]
        name = "c"
        type = "command"
        command = ["true"]
        [dump.env]
        OK = "1"
        "BAD NAME" = "2"
        ''')
    assert _issues(path) == [
        f"{path}:10: set[1].paths[3]: 'relative' is not an absolute path (ketch runs from "
        "systemd or cron, whose working directory is /)",
        f"{path}:15: set[2].one_file_system: expected a boolean (true or false), got an integer",
        f"{path}:22: dump[1].env.\"BAD NAME\": not a valid environment variable name",
    ]


def test_inline_array_of_tables(tmp_path: Path) -> None:
    path = _write(tmp_path, '''
        repository = "/r"
        set = [
          { name = "a", paths = ["/a"] },
          { name = "b", pahts = ["/b"] },
        ]
        ''')
    assert _issues(path) == [
        f"{path}:4: set[2].pahts: unknown key (did you mean 'paths'?)",
    ]  # and not also "paths: required key is missing": that is the same mistake


# -- every kind of mistake ---------------------------------------------------------------

_BASE = '''# the file starts here
repository = "/var/backups/ketch"

[[set]]
name = "etc"
paths = ["/etc"]
'''

MISTAKES = [
    ("typo with a suggestion", '[[set]]\nname = "w"\npahts = ["/w"]\n', 9, "set[2].pahts",
     "unknown key (did you mean 'paths'?)"),
    ("unknown top-level table", '[schedul]\ntime = "22:00"\n', 7, "schedul",
     "unknown key (did you mean 'schedule'?)"),
    ("wrong type", '[schedule]\nenabled = "yes"\n', 8, "schedule.enabled",
     "expected a boolean (true or false), got a string"),
    ("a string for a list", '[[set]]\nname = "w"\npaths = "/w"\n', 9, "set[2].paths",
     'expected an array of strings, got a string (write ["/w"])'),
    ("a table for an array of tables", "[dump]\nname = 'x'\n", 7, "dump",
     "expected [[dump]] tables, got a table"),
    ("missing required key", '[[set]]\nname = "w"\n', 7, "set[2].paths",
     "required key is missing"),
    ("missing dump type", '[[dump]]\nname = "db"\n', 7, "dump[1].type",
     "required key is missing"),
    ("duplicate names", '[[dump]]\nname = "etc"\ntype = "command"\ncommand = ["true"]\n', 8,
     "dump[1].name", "duplicate name 'etc' (also set[1].name, line 5; each name is its "
     "own branch)"),
    ("bad branch name", '[[set]]\nname = "my files"\npaths = ["/x"]\n', 8, "set[2].name",
     "'my files' is not usable as a branch name: it contains ' '"),
    ("bad time", '[schedule]\ntime = "9:30"\n', 8, "schedule.time",
     "expected HH:MM (24-hour local time, e.g. \"22:00\"), got '9:30'"),
    ("bad delay", '[schedule]\nrandomized_delay = "half an hour"\n', 8,
     "schedule.randomized_delay", "expected a duration such as \"30m\", \"1h\", \"90s\" or "
     "\"0\", got 'half an hour'"),
    ("bad dump type", '[[dump]]\nname = "db"\ntype = "mysq"\n', 9, "dump[1].type",
     "unknown dump type 'mysq' (did you mean 'mysql'? expected one of mysql, postgresql, "
     "mongodb, sqlite, command)"),
    ("key of another dump type", '[[dump]]\nname = "db"\ntype = "mysql"\n'
     'passfile = "/etc/pgpass"\n', 10, "dump[1].passfile",
     "not used by mysql dumps (only by postgresql)"),
    ("sqlite without path", '[[dump]]\nname = "db"\ntype = "sqlite"\n', 7, "dump[1].path",
     "a sqlite dump needs path"),
    ("command without command", '[[dump]]\nname = "db"\ntype = "command"\n', 7,
     "dump[1].command", "a command dump needs command (the program and its arguments)"),
    ("relative path", '[[set]]\nname = "w"\npaths = ["/w", "www"]\n', 9, "set[2].paths[2]",
     "'www' is not an absolute path (ketch runs from systemd or cron, whose working "
     "directory is /)"),
    ("relative credential file", '[[dump]]\nname = "db"\ntype = "mysql"\n'
     'options_file = "~/.my.cnf"\n', 10, "dump[1].options_file",
     "'~/.my.cnf' is not an absolute path (ketch runs from systemd or cron, whose working "
     "directory is /)"),
    ("ftp ping url", '[notify]\nping_url = "ftp://hc/x"\n', 8, "notify.ping_url",
     "expected an http:// or https:// URL, got 'ftp://hc/x'"),
    ("email from typo", '[notify.email]\nsmtp_host = "m"\nto = ["a@b"]\nfrm = "k@b"\n', 10,
     "notify.email.frm", "unknown key (did you mean 'from'?)"),
    ("ssl and starttls", '[notify.email]\nsmtp_host = "m"\nto = ["a@b"]\nssl = true\n'
     'starttls = true\n', 10, "notify.email.ssl", "ssl and starttls exclude each other "
     "(ssl: SMTPS, usually port 465; starttls: usually port 587)"),
    ("port as a boolean", '[[dump]]\nname = "db"\ntype = "mysql"\nport = true\n', 10,
     "dump[1].port", "expected an integer, got a boolean"),
    ("retention key typo", '[retention]\nkeep-dialy = 7\n', 8, "retention.keep-dialy",
     "unknown key (did you mean 'keep-daily'?)"),
    ("retention key with underscore", '[set.retention]\nkeep_daily = 7\n', 8,
     "set[1].retention.keep_daily", "unknown key (did you mean 'keep-daily'?)"),
    ("negative keep count", '[[dump]]\nname = "db"\ntype = "sqlite"\npath = "/db"\n'
     '[dump.retention]\nkeep-last = -1\n', 12, "dump[1].retention.keep-last",
     "expected 0 or more, got -1"),
    ("keep count as a string", '[retention]\nkeep-weekly = "4"\n', 8,
     "retention.keep-weekly", "expected an integer, got a string"),
    ("keep-within as a number", '[retention]\nkeep-within = 30\n', 8,
     "retention.keep-within", 'expected a duration such as "30d", got an integer'),
    ("retention not a table", 'retention = 7\n', 7, "set[1].retention",
     "expected a table, got an integer"),
    ("bad regex", '[[set]]\nname = "w"\npaths = ["/w"]\nexclude_rx = ["("]\n', 10,
     "set[2].exclude_rx[1]", "bad regular expression: missing ), unterminated subpattern "
     "at position 0"),
]


@pytest.mark.parametrize("what,extra,line,key,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_names_file_line_and_key(tmp_path: Path, what: str, extra: str, line: int,
                                         key: str, message: str) -> None:
    path = _write(tmp_path, _BASE + extra)
    assert _issues(path) == [f"{path}:{line}: {key}: {message}"]


def test_readme_config_example_loads() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rest = text[text.index("## Nightly backups of a machine"):]
    start = rest.index("```toml\n") + len("```toml\n")
    cfg = parse_config(rest[start:rest.index("```\n", start)], "README")
    assert cfg.retention == {"keep-daily": 7, "keep-weekly": 4, "keep-monthly": 6}
    assert cfg.retention_of(cfg.sets[0]) == {"keep-last": 30}
    assert cfg.retention_of(cfg.dumps[0]) == cfg.retention


def test_bad_keep_within_is_named_by_line_and_key(tmp_path: Path) -> None:
    """The duration's own wording is the policy parser's; the line says where."""
    path = _write(tmp_path, _BASE + '[set.retention]\nkeep-daily = 3\nkeep-within = "30 days"\n')
    [issue] = _issues(path)
    assert issue.startswith(f"{path}:9: set[1].retention.keep-within: "), issue
    assert "30 days" in issue and "Traceback" not in issue


def test_set_retention_replaces_the_default(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        repository = "/r"
        [retention]
        keep-daily = 7
        [[set]]
        name = "etc"
        paths = ["/etc"]
        [[set]]
        name = "home"
        paths = ["/home"]
        [set.retention]
        keep-last = 3
        [[dump]]
        name = "db"
        type = "sqlite"
        path = "/db"
        retention = {}
        """)
    cfg = load_config(path)
    etc, home = cfg.sets
    assert cfg.retention_of(etc) == {"keep-daily": 7}
    assert cfg.retention_of(home) == {"keep-last": 3}
    assert cfg.retention_of(cfg.dumps[0]) == {}  # every save kept


def test_relative_local_repository(tmp_path: Path) -> None:
    path = _write(tmp_path, 'repository = "backups"\n')
    assert _issues(path) == [f"{path}:1: repository: 'backups' is not an absolute path (ketch "
                             "runs from systemd or cron, whose working directory is /); or a "
                             "remote: ssh://USER@HOST/PATH"]


def test_missing_repository(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[set]]\nname = "a"\npaths = ["/a"]\n')
    assert _issues(path) == [f"{path}:1: repository: required key is missing"]


def test_toml_syntax_error_is_reformatted(tmp_path: Path) -> None:
    path = _write(tmp_path, 'repository = "/r"\n[[set]\nname = "a"\n')
    assert _issues(path) == [f"{path}:2: TOML syntax error: Expected ']]' at the end of an "
                             "array declaration (column 6)"]
    path = _write(tmp_path, 'repository = "/r"\npaths = [\n', "eof.toml")
    assert _issues(path) == [f"{path}:3: TOML syntax error: Invalid value (at end of document)"]


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    assert _issues(str(tmp_path / "nope.toml")) == [
        f"{tmp_path}/nope.toml: no such file (write one with 'ketch config init')"]
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'repository = "/r"\n# caf\xe9\n')
    assert _issues(str(bad)) == [f"{bad}:2: not UTF-8 text"]


def test_all_errors_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path, '''
        repository = "/r"
        compress = 12
        [[set]]
        name = "a"
        pahts = ["/a"]
        [[dump]]
        name = "a"
        type = "mysq"
        [schedule]
        time = "25:00"
        ''')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert [(i.line, i.key) for i in e.value.issues] == [
        (2, "compress"), (5, "set[1].pahts"), (7, "dump[1].name"),
        (8, "dump[1].type"), (10, "schedule.time")]
    assert e.value.exit_code == 2
    assert all(line.startswith(f"{path}:") for line in str(e.value).splitlines())


def test_delays_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader accepts exactly the time spans the scheduler does (systemd's).
    for good in ("0", "90", "90s", "30m", "30min", "1h 30min", "1hr", "2d"):
        parse_config(f'repository = "/r"\n[schedule]\nrandomized_delay = "{good}"\n', "c")
    for bad in ("", "soon", "-5m"):
        with pytest.raises(ConfigError, match="randomized_delay"):
            parse_config(f'repository = "/r"\n[schedule]\nrandomized_delay = "{bad}"\n', "c")
    monkeypatch.delenv("KETCH_CONFIG", raising=False)
    assert default_config_path() == "/etc/ketch/ketch.toml"
    monkeypatch.setenv("KETCH_CONFIG", "/tmp/k.toml")
    assert default_config_path() == "/tmp/k.toml"


def test_set_options_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_set_option("web=/var/www,srv") == BackupSet("web", ["/var/www",
                                                                     f"{tmp_path}/srv"])
    assert parse_set_option("/var/www") == BackupSet("var-www", ["/var/www"])
    assert [set_name_for(p) for p in ("/etc", "/", "/home/a b/.x")] == ["etc", "rootfs",
                                                                       "home-a-b-.x"]


# -- check_config ----------------------------------------------------------------------------


def _repo(tmp_path: Path) -> str:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    return repo


def _local(tmp_path: Path, **kw: object) -> Config:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return Config(_repo(tmp_path), sets=[BackupSet("data", [str(data)])],
                  log_file=str(tmp_path / "log" / "ketch.log"),
                  lock_file=str(tmp_path / "ketch.lock"), **kw)  # type: ignore[arg-type]


def test_world_readable_credential_file_is_a_warning(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    env_file = tmp_path / "dump.env"
    env_file.write_text("TOKEN=x\n")
    env_file.chmod(0o600)
    cfg = _local(tmp_path, notify=Notify(email=EmailSettings(
        "localhost", ["a@example.com"], username="k", password_file=str(secret))),
        dumps=[DumpSpec("cmd", "command", command=["true"], env_file=str(env_file))])
    results = {r.what: r for r in check_config(cfg)}
    warn = results["notify.email.password_file"]
    assert (warn.ok, warn.warning) == (True, True)
    assert warn.detail == (f"{secret} holds credentials and every user can read it "
                           f"(chmod 600 {secret})")
    private = results["dump cmd (command): env_file"]
    assert (private.status, private.detail) == ("ok", f"{env_file}: mode 0600")
    assert results["dump cmd (command)"].status == "ok"


def test_check_says_which_items_are_pruned_and_where_not(tmp_path: Path) -> None:
    cfg = _local(tmp_path, retention={"keep-daily": 7},
                 dumps=[DumpSpec("db", "command", command=["true"], retention={})])
    line = {r.what: r for r in check_config(cfg)}["retention"]
    assert (line.status, line.detail) == ("ok", "data: keep-daily 7; db: every save kept")
    cfg.repository = "s3://bucket/mirror/web1"
    line = {r.what: r for r in check_config(cfg)}["retention"]
    assert line.status == "warn" and "an S3 mirror is read-only: it is not applied" in line.detail
    cfg.retention = None  # nothing to prune: no line at all
    assert "retention" not in {r.what for r in check_config(cfg)}


def test_missing_path_and_missing_repository_fail(tmp_path: Path) -> None:
    # A missing set path fails `ketch run`'s set (exit 2): the check says ✗ too.
    cfg = _local(tmp_path)
    cfg.sets[0].paths.append(str(tmp_path / "gone"))
    cfg.repository = str(tmp_path / "norepo")
    by_what = {r.what: r for r in check_config(cfg)}
    assert by_what[f"set data: {tmp_path}/gone"].status == "fail"
    assert by_what[f"set data: {tmp_path}/data"].status == "ok"
    repo = by_what[f"repository {tmp_path}/norepo"]
    assert repo.status == "fail" and "not a repository" in repo.detail


# -- the CLI ------------------------------------------------------------------------------------


def _init_by_flags(run_ketch: RunKetch, tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "conf" / "ketch.toml"
    proc = run_ketch("config", "init", "--config", cfg, "--repository", tmp_path / "repo",
                     "--set", f"web={tmp_path / 'www'}", "--set", f"etc={tmp_path / 'etc'}",
                     "--time", "03:30", "--no-detect", check=True)
    out = proc.stdout.decode()
    assert f"Wrote {cfg}" in out and f"Created repository {tmp_path / 'repo'}" in out
    assert f"ketch config check --config {cfg}" in out and "ketch schedule install" in out
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    return cfg


def test_init_by_flags_writes_what_check_accepts(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = _init_by_flags(run_ketch, tmp_path)
    loaded = load_config(str(cfg))
    assert loaded.repository == str(tmp_path / "repo")
    assert [(s.name, s.paths) for s in loaded.sets] == [("web", [str(tmp_path / "www")]),
                                                        ("etc", [str(tmp_path / "etc")])]
    assert loaded.schedule.time == "03:30"
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x)")
    con.close()
    # What a user does by hand after init: uncomment an example, add dumps.
    text = cfg.read_text().replace('# ping_url = "https://hc-ping.com/YOUR-UUID"',
                                   'ping_url = "https://hc-ping.com/x"')
    cfg.write_text(text + f'\n[[dump]]\nname = "hello"\ntype = "command"\n'
                          f'command = ["sh", "-c", "echo hi"]\n'
                          f'\n[[dump]]\nname = "app-db"\ntype = "sqlite"\npath = "{db}"\n')
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    proc = run_ketch("config", "check", "--config", cfg, env=env)
    out = proc.stdout.decode()
    # Its one warning: no schedule is installed yet (the next step init printed).
    assert proc.returncode == 1, out + proc.stderr.decode()
    [warning] = [ln for ln in out.splitlines() if not ln.startswith("✓ ")][:-1]
    assert warning.startswith("! schedule: not installed (`ketch schedule install`)")
    assert "✓ dump hello (command): reachable" in out
    assert "✓ dump app-db (sqlite): reachable" in out
    assert f"✓ repository {tmp_path / 'repo'}: opens; 0 branches" in out


def test_init_refuses_to_overwrite_without_force(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = _init_by_flags(run_ketch, tmp_path)
    cfg.write_text("# mine\n")
    proc = run_ketch("config", "init", "--config", cfg, "--no-detect")
    assert proc.returncode == 2
    assert proc.stderr.decode() == (f"ketch: error: {cfg} already exists (use --force to "
                                    "replace it)\n")
    assert cfg.read_text() == "# mine\n"
    run_ketch("config", "init", "--config", cfg, "--repository", tmp_path / "repo",
              "--no-detect", "--force", "--yes", check=True)
    assert load_config(str(cfg)).repository == str(tmp_path / "repo")


def test_init_rejects_a_bad_set_name(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = tmp_path / "ketch.toml"
    proc = run_ketch("config", "init", "--config", cfg, "--repository", tmp_path / "r",
                     "--set", f"a b={tmp_path}", "--no-detect")
    assert proc.returncode == 2
    assert proc.stderr.decode() == ("ketch: error: set[1].name: 'a b' is not usable as a "
                                    "branch name: it contains ' '\n")
    assert not cfg.exists() and not (tmp_path / "r").exists()


def test_init_asks_questions_on_a_terminal(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ketch.cli import config as cli_config
    from ketch.cli import config_init
    from ketch.jobs import configinit

    monkeypatch.setattr(config_init, "_stdin_is_terminal", lambda: True)
    mysql = DumpSpec("mysql", "mysql", databases=["app"], options_file="/etc/mysql/debian.cnf")
    pg = DumpSpec("postgresql", "postgresql", run_as="postgres")
    monkeypatch.setattr(configinit, "detect_dumps", lambda: ([mysql, pg], None))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = tmp_path / "etc-ketch" / "ketch.toml"
    answers = f"{tmp_path / 'repo'}\n{tmp_path / 'a'} {tmp_path / 'b'}\ny\nn\n25:00\n04:00\n"
    res = CliRunner().invoke(cli_config.command, ["init", "--config", str(cfg)], input=answers)
    assert res.exit_code == 0, res.output
    assert "Back up mysql on localhost (app)?" in res.output
    assert "Back up postgresql on localhost (all databases)?" in res.output
    assert "expected HH:MM" in res.output  # 25:00 was asked again
    loaded = load_config(str(cfg))
    assert loaded.repository == str(tmp_path / "repo")
    assert [s.name for s in loaded.sets] == [set_name_for(str(tmp_path / x)) for x in "ab"]
    assert loaded.dumps == [mysql]
    assert loaded.schedule.time == "04:00"
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700


def _check(run_ketch: RunKetch, cfg: Config, tmp_path: Path, *args: str,
           env: dict[str, str] | None = None) -> tuple[int, str, str]:
    path = _write(tmp_path, render_config(cfg), "check.toml")
    proc = run_ketch("config", "check", "--config", path, *args, env=env)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_check_exit_codes_and_json(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = _local(tmp_path, notify=Notify(ping_url="https://hc-ping.com/x"),
                 schedule=Schedule(enabled=False))
    code, out, err = _check(run_ketch, cfg, tmp_path)
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-1].endswith(": 6 ok, 0 warnings, 0 failed")

    cfg.notify = Notify()  # nobody hears of a failure: a warning
    code, out, _ = _check(run_ketch, cfg, tmp_path)
    assert code == 1
    assert ("! notify: nothing configured: a failed nightly run tells nobody (set [notify] "
            "ping_url or [notify.email])") in out

    code, out, _ = _check(run_ketch, cfg, tmp_path, "--json")
    report = json.loads(out)
    assert (code, report["status"], report["errors"]) == (1, "warn", [])
    assert {c["status"] for c in report["checks"]} == {"ok", "warn"}
    assert {"what", "ok", "warning", "detail", "status"} <= set(report["checks"][0])

    cfg.sets[0].paths.append(str(tmp_path / "gone"))
    code, out, _ = _check(run_ketch, cfg, tmp_path)
    assert code == 2
    assert (f"✗ set data: {tmp_path}/gone: does not exist (a run fails this set until it "
            "does)") in out

    cfg.repository = str(tmp_path / "nothing-here")
    code, out, _ = _check(run_ketch, cfg, tmp_path)
    assert code == 2
    assert f"✗ repository {tmp_path}/nothing-here: " in out


def test_check_reports_config_errors_one_per_line(run_ketch: RunKetch, tmp_path: Path) -> None:
    path = _write(tmp_path, _BASE + '[[set]]\nname = "w"\npahts = ["/w"]\n[schedule]\n'
                                    'time = "9:30"\n')
    proc = run_ketch("config", "check", "--config", path)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"ketch: error: {path}:9: set[2].pahts: unknown key (did you mean 'paths'?)",
        f"ketch: error: {path}:11: schedule.time: expected HH:MM (24-hour local time, e.g. "
        "\"22:00\"), got '9:30'",
    ]
    proc = run_ketch("config", "check", "--config", path, "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["status"] == "fail"
    assert report["errors"][0] == {"file": path, "line": 9, "key": "set[2].pahts",
                                   "message": "unknown key (did you mean 'paths'?)"}


def test_unreachable_remote_is_one_failure_line(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = _local(tmp_path)
    cfg.repository = "ssh://nohost.invalid/x"
    code, out, err = _check(run_ketch, cfg, tmp_path, env={"KETCH_RSH": "false"})
    assert code == 2
    failed = [ln for ln in out.splitlines() if ln.startswith("✗")]
    assert len(failed) == 1 and failed[0].startswith("✗ repository ssh://nohost.invalid/x: ")
    assert "Traceback" not in err and "Traceback" not in out


def test_check_of_a_missing_config(run_ketch: RunKetch, tmp_path: Path) -> None:
    proc = run_ketch("config", "check", "--config", tmp_path / "none.toml")
    assert proc.returncode == 2
    assert proc.stderr.decode() == (f"ketch: error: {tmp_path}/none.toml: no such file "
                                    "(write one with 'ketch config init')\n")


def test_world_readable_credentials_give_exit_1(run_ketch: RunKetch, tmp_path: Path) -> None:
    env_file = tmp_path / "dump.env"
    env_file.write_text("TOKEN=x\n")
    os.chmod(env_file, 0o644)
    cfg = _local(tmp_path, dumps=[DumpSpec("cmd", "command", command=["true"],
                                           env_file=str(env_file))])
    code, out, _ = _check(run_ketch, cfg, tmp_path)
    assert code == 1
    assert (f"! dump cmd (command): env_file: {env_file} holds credentials and every user "
            f"can read it (chmod 600 {env_file})") in out


def test_init_with_a_remote_repository(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = tmp_path / "ketch.toml"
    proc = run_ketch("config", "init", "--config", cfg, "--repository",
                     "backup@server:/srv/ketch/web1", "--set", f"t={tmp_path}", "--no-detect",
                     check=True)
    out = proc.stdout.decode()
    assert "ketch init -r backup@server:/srv/ketch/web1 " in out  # not created: needs ssh
    assert "Created repository" not in out
    assert load_config(str(cfg)).repository == "backup@server:/srv/ketch/web1"

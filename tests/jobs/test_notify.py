"""Notifications against real local servers: an HTTP server that records the
healthchecks-style pings, and an aiosmtpd SMTP server (plain, STARTTLS and
implicit TLS, with a self-signed certificate trusted through SSL_CERT_FILE)."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiosmtpd.controller as aiosmtpd_controller
import aiosmtpd.smtp as aiosmtpd_smtp
import pytest

from ketch.jobs.model import EmailSettings, Notify
from ketch.jobs.notify import Notifier
from tests.conftest import in_ci

PASSWORD = "s3cr3t-Pa55word-xyzzy"
REPORT: dict[str, object] = {"machine": "box", "items": [{"name": "etc", "files": 3}]}


# -- HTTP --------------------------------------------------------------------

@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class PingServer:
    url: str  # base, e.g. http://127.0.0.1:PORT
    requests: list[Recorded] = field(default_factory=list)
    fail_first: int = 0  # answer this many requests with HTTP 503 first


@pytest.fixture
def ping_server() -> Iterator[PingServer]:
    state = PingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(Recorded(self.command, self.path, body))
            if state.fail_first > 0:
                state.fail_first -= 1
                code = 503
            else:
                code = 404 if "/unknown-check" in self.path else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_success_and_fail_pings(ping_server: PingServer) -> None:
    base = f"{ping_server.url}/ping/0c8e1f3a-check"
    n = Notifier(Notify(ping_url=base), machine="box", retry_delay=0)
    assert n.start() == []
    assert n.finish(0, "all good\n", REPORT) == []
    assert n.finish(1, "1 warning: /etc/shadow- unreadable", REPORT) == []
    assert n.finish(2, "dump db failed", REPORT) == []
    got = [(r.method, r.path, r.body) for r in ping_server.requests]
    assert got == [
        ("GET", "/ping/0c8e1f3a-check/start", b""),
        ("POST", "/ping/0c8e1f3a-check", b"all good\n"),
        ("POST", "/ping/0c8e1f3a-check", b"1 warning: /etc/shadow- unreadable"),
        ("POST", "/ping/0c8e1f3a-check/fail", b"dump db failed"),
    ]


def test_trailing_slash_and_no_url(ping_server: PingServer) -> None:
    n = Notifier(Notify(ping_url=f"{ping_server.url}/ping/abc/"), machine="box")
    assert n.start() == []
    assert ping_server.requests[0].path == "/ping/abc/start"
    assert Notifier(Notify(), machine="box").start() == []
    assert Notifier(Notify(), machine="box").finish(2, "x", REPORT) == []


def test_server_down_is_a_warning() -> None:
    port = _free_port()  # nothing listens there any more: connection refused
    n = Notifier(Notify(ping_url=f"http://127.0.0.1:{port}/ping/secret-uuid", timeout=2),
                 machine="box", retry_delay=0)
    warnings = n.finish(2, "failed", REPORT)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"notify: ping http://127.0.0.1:{port}/…/fail failed: ")
    assert "refused" in warnings[0].lower()
    assert "secret-uuid" not in warnings[0]  # a healthchecks path is the check's key
    assert len(n.start()) == 1


def test_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ping/x"
        n = Notifier(Notify(ping_url=url, timeout=0.5), machine="box", tries=1)
        warnings = n.start()
    assert len(warnings) == 1 and "timed out" in warnings[0]


def test_retry_after_server_error_and_no_retry_on_404(ping_server: PingServer) -> None:
    ping_server.fail_first = 1
    n = Notifier(Notify(ping_url=f"{ping_server.url}/ping/abc"), machine="box", retry_delay=0)
    assert n.finish(0, "ok", REPORT) == []
    assert [r.path for r in ping_server.requests] == ["/ping/abc", "/ping/abc"]

    ping_server.requests.clear()
    n = Notifier(Notify(ping_url=f"{ping_server.url}/unknown-check"), machine="box",
                 retry_delay=0)
    warnings = n.start()
    assert len(warnings) == 1 and "HTTP 404" in warnings[0]
    assert len(ping_server.requests) == 1


def test_unsupported_scheme_is_a_warning() -> None:
    warnings = Notifier(Notify(ping_url="file:///etc/passwd"), machine="box").start()
    assert len(warnings) == 1 and "only http:// and https://" in warnings[0]


# -- SMTP --------------------------------------------------------------------

class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> Any:
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"backup" and auth_data.password == PASSWORD.encode()
        # handled=False: the server answers 535 itself
        return aiosmtpd_smtp.AuthResult(success=ok, handled=False)


@dataclass
class Smtp:
    port: int
    inbox: Inbox


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (the client trusts it through
    SSL_CERT_FILE, so certificate checking stays on as in production)."""
    if shutil.which("openssl") is None and not in_ci():
        pytest.skip("openssl is not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return ctx


def _smtp(**kwargs: Any) -> Generator[Smtp, None, None]:
    inbox = Inbox()
    port = _free_port()
    controller = aiosmtpd_controller.Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate, **kwargs)
    controller.start()
    try:
        yield Smtp(port, inbox)
    finally:
        controller.stop()


@pytest.fixture
def smtp_plain() -> Iterator[Smtp]:
    yield from _smtp(auth_require_tls=False)


@pytest.fixture
def smtp_starttls(certificate: tuple[Path, Path],
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Smtp]:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    yield from _smtp(tls_context=_server_context(certificate), require_starttls=True)


@pytest.fixture
def smtp_ssl(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Smtp]:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    # aiosmtpd only counts STARTTLS as TLS when deciding whether to offer AUTH.
    yield from _smtp(ssl_context=_server_context(certificate), auth_require_tls=False)


def _settings(port: int, **kw: Any) -> EmailSettings:
    return EmailSettings(smtp_host=kw.pop("smtp_host", "127.0.0.1"), smtp_port=port,
                         to=["ops@example.org", "admin@example.org"],
                         sender="ketch@box.example.org", **kw)


def test_mail_on_failure_with_report_attached(smtp_plain: Smtp) -> None:
    n = Notifier(Notify(email=_settings(smtp_plain.port), timeout=5), machine="box")
    assert n.finish(2, "dump db: mysqldump exited 2\n", REPORT) == []
    [(sender, rcpts, msg)] = smtp_plain.inbox.messages
    assert sender == "ketch@box.example.org"
    assert rcpts == ["ops@example.org", "admin@example.org"]
    assert msg["Subject"] == "ketch: box: FAILED"
    assert msg["To"] == "ops@example.org, admin@example.org"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "dump db: mysqldump exited 2\n"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "ketch-report.json"
    assert json.loads(attachment.get_content()) == REPORT


def test_mail_on_warnings_and_on_success_only_when_asked(smtp_plain: Smtp) -> None:
    inbox = smtp_plain.inbox
    quiet = Notifier(Notify(email=_settings(smtp_plain.port)), machine="box")
    assert quiet.finish(0, "ok", REPORT) == []
    assert inbox.messages == []
    assert quiet.finish(1, "1 warning", REPORT) == []
    assert [m["Subject"] for _, _, m in inbox.messages] == ["ketch: box: WARNINGS"]
    chatty = Notifier(Notify(email=_settings(smtp_plain.port), on_success=True),
                      machine="box\nBcc: evil@example.org")  # no header injection
    assert chatty.finish(0, "ok", REPORT) == []
    assert inbox.messages[-1][2]["Subject"] == "ketch: box Bcc: evil@example.org: OK"
    assert inbox.messages[-1][1] == ["ops@example.org", "admin@example.org"]


def test_ping_and_mail_together(smtp_plain: Smtp, ping_server: PingServer) -> None:
    notify = Notify(ping_url=f"{ping_server.url}/p", email=_settings(smtp_plain.port))
    assert Notifier(notify, machine="box").finish(2, "broken", REPORT) == []
    assert [r.path for r in ping_server.requests] == ["/p/fail"]
    assert len(smtp_plain.inbox.messages) == 1


def test_smtp_down_is_a_warning() -> None:
    n = Notifier(Notify(email=_settings(_free_port()), timeout=2), machine="box")
    [warning] = n.finish(2, "broken", REPORT)
    assert warning.startswith("notify: email via 127.0.0.1:")
    assert "refused" in warning.lower()


def _password_file(tmp_path: Path, password: str = PASSWORD) -> str:
    path = tmp_path / "smtp-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def _assert_secret_kept(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
                        warnings: list[str]) -> None:
    out, err = capsys.readouterr()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("ketch")]
    for text in [*warnings, *ours, out, err]:
        assert PASSWORD not in text


def test_starttls_login(smtp_starttls: Smtp, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(smtp_starttls.port, smtp_host="localhost", starttls=True,
                         username="backup", password_file=_password_file(tmp_path))
    warnings = Notifier(Notify(email=settings, timeout=5), machine="box").finish(1, "w", REPORT)
    assert warnings == []
    assert smtp_starttls.inbox.logins == [(b"backup", PASSWORD.encode())]
    assert len(smtp_starttls.inbox.messages) == 1
    _assert_secret_kept(caplog, capsys, warnings)


def test_implicit_tls_login(smtp_ssl: Smtp, tmp_path: Path) -> None:
    settings = _settings(smtp_ssl.port, smtp_host="localhost", ssl=True, username="backup",
                         password_file=_password_file(tmp_path))
    assert Notifier(Notify(email=settings, timeout=5), machine="box").finish(2, "x", REPORT) == []
    assert smtp_ssl.inbox.logins == [(b"backup", PASSWORD.encode())]
    assert len(smtp_ssl.inbox.messages) == 1


def test_wrong_password_is_a_warning_without_the_password(
        smtp_starttls: Smtp, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = PASSWORD + "-wrong"
    settings = _settings(smtp_starttls.port, smtp_host="localhost", starttls=True,
                         username="backup", password_file=_password_file(tmp_path, wrong))
    warnings = Notifier(Notify(email=settings, timeout=5), machine="box").finish(2, "x", REPORT)
    assert len(warnings) == 1 and "SMTPAuthenticationError" in warnings[0]
    assert smtp_starttls.inbox.messages == []
    out, err = capsys.readouterr()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("ketch")]
    for text in [*warnings, *ours, out, err]:
        assert wrong not in text and PASSWORD not in text


def test_untrusted_certificate_is_refused_before_login(
        certificate: tuple[Path, Path], tmp_path: Path) -> None:
    # No SSL_CERT_FILE here: the self-signed certificate is not trusted.
    gen = _smtp(tls_context=_server_context(certificate), require_starttls=True)
    server = next(gen)
    try:
        settings = _settings(server.port, smtp_host="localhost", starttls=True,
                             username="backup", password_file=_password_file(tmp_path))
        [warning] = Notifier(Notify(email=settings, timeout=5), machine="box").finish(
            2, "x", REPORT)
        assert "CERTIFICATE_VERIFY_FAILED" in warning
        assert server.inbox.logins == [] and server.inbox.messages == []
    finally:
        gen.close()


def test_no_cleartext_login_over_the_network(tmp_path: Path) -> None:
    settings = EmailSettings(smtp_host="mail.example.org", to=["a@example.org"],
                             username="backup", password_file=_password_file(tmp_path))
    [warning] = Notifier(Notify(email=settings), machine="box").finish(2, "x", REPORT)
    assert "without TLS" in warning


def test_unreadable_password_file_is_a_warning(smtp_plain: Smtp, tmp_path: Path) -> None:
    settings = _settings(smtp_plain.port, username="backup",
                         password_file=str(tmp_path / "missing"))
    [warning] = Notifier(Notify(email=settings), machine="box").finish(2, "x", REPORT)
    assert "missing" in warning and "No such file" in warning
    assert smtp_plain.inbox.messages == []

"""Telling someone how the nightly run went: healthchecks.io-style pings
(URL/start, URL on success, URL/fail) and email through an SMTP server.

A notification that cannot be delivered never raises and never changes the
run's result: it comes back as a warning string for the run report. Warnings
never contain the SMTP password, and show ping URLs without their path (the
path of a healthchecks URL is the check's secret key).
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ketch import __version__
from ketch.errors import EXIT_OK, EXIT_WARNINGS
from ketch.jobs.model import EmailSettings, Notify

log = logging.getLogger(__name__)

# healthchecks.io keeps the first 100 kB of a ping body; send no more than that.
MAX_PING_BODY = 100_000
LOOPBACK = ("localhost", "127.0.0.1", "::1")
STATUS = {EXIT_OK: "OK", EXIT_WARNINGS: "WARNINGS"}


def status_word(exit_code: int) -> str:
    return STATUS.get(exit_code, "FAILED")


def _show_url(url: str) -> str:
    """scheme://host/…/SUFFIX: enough to tell which ping failed, without the key."""
    parts = urllib.parse.urlsplit(url)
    last = parts.path.rstrip("/").rsplit("/", 1)[-1]
    suffix = f"/{last}" if last in ("start", "fail") else ""
    return f"{parts.scheme}://{parts.netloc}/…{suffix}"


class Notifier:
    """Pings and mails for one run: `start()` before it, `finish()` after it.

    `tries` pings are attempted `retry_delay` seconds apart (a ping lost to a
    network blip would page someone for a backup that worked); each attempt, and
    the whole SMTP conversation, is bounded by `Notify.timeout`."""

    def __init__(self, notify: Notify, *, machine: str, tries: int = 2,
                 retry_delay: float = 2.0) -> None:
        self.notify = notify
        self.machine = " ".join(machine.split())  # no line breaks in a mail header
        self.tries = max(1, tries)
        self.retry_delay = retry_delay

    def start(self) -> list[str]:
        if not self.notify.ping_url:
            return []
        return self._ping("start", None)

    def finish(self, exit_code: int, summary: str, report: Mapping[str, object]) -> list[str]:
        warnings: list[str] = []
        failed = exit_code not in STATUS
        if self.notify.ping_url:
            # Warnings are still a backup that was made: success for the pinged check.
            warnings += self._ping("fail" if failed else "", summary)
        email = self.notify.email
        if email is not None and (exit_code != EXIT_OK or self.notify.on_success):
            warnings += self._mail(email, exit_code, summary, report)
        return warnings

    # -- pings ---------------------------------------------------------------

    def _ping(self, suffix: str, body: str | None) -> list[str]:
        base = self.notify.ping_url or ""
        url = f"{base.rstrip('/')}/{suffix}" if suffix else base
        shown = _show_url(url)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return [f"notify: ping {shown}: only http:// and https:// URLs can be pinged"]
        data = None
        if body is not None:  # the end of a summary says how the run ended: keep that
            data = body.encode("utf-8", "replace")[-MAX_PING_BODY:]
            data = data.decode("utf-8", "ignore").encode("utf-8")
        problem = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.retry_delay)
            req = urllib.request.Request(
                url, data=data, method="POST" if data is not None else "GET",
                headers={"User-Agent": f"ketch/{__version__}",
                         "Content-Type": "text/plain; charset=utf-8"})
            try:
                with urllib.request.urlopen(req, timeout=self.notify.timeout) as resp:
                    resp.read(4096)
                log.debug("pinged %s", shown)
                return []
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if e.code < 500:  # the server understood and refused: retrying won't help
                    break
            except (OSError, ValueError) as e:  # URLError, timeouts, refused, bad URL
                problem = str(getattr(e, "reason", None) or e)
        return [f"notify: ping {shown} failed: {problem}"]

    # -- email ---------------------------------------------------------------

    def _mail(self, email: EmailSettings, exit_code: int, summary: str,
              report: Mapping[str, object]) -> list[str]:
        password: str | None = None
        try:
            if email.password_file:
                with open(email.password_file, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            if email.username and password is None:
                return ["notify: email: username is set but password_file is not: not sent"]
            if email.username and not (email.ssl or email.starttls) \
                    and email.smtp_host not in LOOPBACK:
                return [f"notify: email: not logging in to {email.smtp_host} without TLS "
                        "(the password would cross the network in clear): set starttls "
                        "or ssl: not sent"]
            msg = self._message(email, exit_code, summary, report)
            self._send(email, msg, password)
            log.debug("mailed the run report to %s", ", ".join(email.to))
            return []
        except OSError as e:  # smtplib errors, TLS failures, timeouts, unreadable file
            what = f"{e.filename}: {e.strerror}" if getattr(e, "filename", None) else str(e)
            return [_scrub(f"notify: email via {email.smtp_host}:{email.smtp_port} "
                           f"failed: {type(e).__name__}: {what}", password)]
        except (ValueError, TypeError) as e:  # e.g. a bad address or header
            return [_scrub(f"notify: email failed: {type(e).__name__}: {e}", password)]

    def _message(self, email: EmailSettings, exit_code: int, summary: str,
                 report: Mapping[str, object]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"ketch: {self.machine}: {status_word(exit_code)}"
        msg["From"] = email.sender
        msg["To"] = ", ".join(email.to)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=email.sender.rpartition("@")[2] or None)
        msg.set_content(summary or "(no summary)")
        payload = json.dumps(report, indent=2, sort_keys=True, default=str)
        msg.add_attachment(payload.encode("utf-8"), maintype="application", subtype="json",
                           filename="ketch-report.json")
        return msg

    def _send(self, email: EmailSettings, msg: EmailMessage, password: str | None) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if email.ssl:
            smtp = smtplib.SMTP_SSL(email.smtp_host, email.smtp_port,
                                    timeout=self.notify.timeout, context=context)
        else:
            smtp = smtplib.SMTP(email.smtp_host, email.smtp_port, timeout=self.notify.timeout)
        with smtp:
            if email.starttls and not email.ssl:
                smtp.starttls(context=context)
            if email.username:
                smtp.login(email.username, password or "")
            smtp.send_message(msg)


def _scrub(text: str, secret: str | None) -> str:
    """A server may echo what it was sent: make sure the password is not in it."""
    if secret:
        text = text.replace(secret, "***")
    return text

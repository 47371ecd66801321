"""Email notifications over SMTP (aiosmtplib): one message per event, to all its
recipients, in plain text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import msgspec

from taskflow.adapters.outbox import Delivery
from taskflow.config import SmtpSettings
from taskflow.notifier.backoff import Attempted
from taskflow.notifier.sinks import Report

log = logging.getLogger(__name__)


def compose(item: Delivery, sender: str, api_url: str) -> EmailMessage:
    data: dict[str, Any] = msgspec.json.decode(item.body)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join((item.target or "").split(","))
    msg["Message-ID"] = f"<{item.message_id}@taskflow>"  # the same on every retry
    if item.event.startswith("workflow."):
        msg["Subject"] = f"[taskflow] {item.event}: workflow {data.get('name')} {data['id']}"
        lines = [f"Workflow {data.get('name')} ({data['id']}) ended {data.get('state')}.",
                 "", f"Jobs: {data.get('jobs')}", f"Tenant: {data.get('tenant')}",
                 f"Finished: {data.get('finished_at')}"]
        link = f"{api_url.rstrip('/')}/workflows/{data['id']}" if api_url else ""
    else:
        msg["Subject"] = f"[taskflow] {item.event}: {data.get('task')} {data['id']}"
        lines = [
            f"Job {data['id']} ended {data.get('state')}.", "",
            f"Task:     {data.get('task')}", f"Queue:    {data.get('queue')}",
            f"State:    {data.get('state')}",
            f"Attempts: {data.get('attempts')} of {data.get('max_attempts')}",
            f"Error:    {data.get('error') or '-'}", f"Tenant:   {data.get('tenant')}",
            f"Created:  {data.get('created_at')}", f"Finished: {data.get('finished_at')}",
        ]
        if data.get("workflow_id"):
            lines.append(f"Workflow: {data['workflow_id']} (node {data.get('node')})")
        link = f"{api_url.rstrip('/')}/tasks/{data['id']}" if api_url else ""
    if link:
        lines += ["", f"Details: {link}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _refusals(refused: list[tuple[str, int, str]], sent: bool) -> Attempted:
    """How a message went whose recipients ``refused`` it (address, code, message),
    ``sent`` to the others or to none: those refused for now (4xx) alone get the retry;
    those refused for good (5xx) do not (logged when it went to someone, the delivery
    failed when to nobody)."""
    later = [rcpt for rcpt, code, _ in refused if code < 500]
    error = "; ".join(f"{rcpt}: {code} {message}" for rcpt, code, message in refused)
    if later:
        return Attempted.retry(error, target=",".join(later))
    if not sent:
        return Attempted.give_up(error)
    if refused:
        log.warning("an email went out, but these recipients refused it: %s", error)
    return Attempted.delivered()


class EmailSink:
    """Sends a batch over one SMTP connection. A 5xx answer fails the message for good;
    4xx answers and connection trouble retry it. When the server takes some recipients
    and refuses others for now (4xx), the retry goes to those others alone."""

    channel = "email"
    backend = "smtp"

    def __init__(self, settings: SmtpSettings, api_url: str) -> None:
        self.settings = settings
        self.api_url = api_url

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host, port=s.port, use_tls=s.tls, start_tls=s.starttls,
            username=s.username or None, password=s.password or None, timeout=s.timeout)

    async def deliver(self, items: Sequence[Delivery], done: Report) -> None:
        smtp = self._client()
        try:
            await smtp.connect()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            for item in items:
                done(item, Attempted.retry(
                    f"SMTP {self.settings.host}:{self.settings.port}: {exc}"))
            return
        try:
            for n, item in enumerate(items):
                if not item.subscribed:
                    done(item, Attempted.give_up("the subscription was deleted"))
                    continue
                try:
                    message = compose(item, self.settings.sender, self.api_url)
                except (ValueError, KeyError, msgspec.DecodeError) as exc:
                    # Not one the mail library will write (a header with a line break),
                    # whatever the server: this row fails, the batch goes on.
                    done(item, Attempted.give_up(f"cannot be written as an email: {exc}"))
                    continue
                try:
                    refused, _ = await smtp.send_message(message)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    done(item, _refusals([(r.recipient, r.code, r.message)
                                          for r in exc.recipients], sent=False))
                except aiosmtplib.SMTPResponseException as exc:
                    error = f"SMTP {exc.code} {exc.message}"
                    done(item, Attempted.give_up(error) if exc.code >= 500
                         else Attempted.retry(error))
                except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                    # The connection is gone: this one and the rest wait for the next try.
                    for rest in items[n:]:
                        done(rest, Attempted.retry(f"SMTP: {exc}"))
                    break
                else:
                    done(item, _refusals([(rcpt, answer.code, answer.message)
                                          for rcpt, answer in refused.items()], sent=True))
        finally:
            try:
                await smtp.quit()
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                smtp.close()

    async def close(self) -> None:
        pass

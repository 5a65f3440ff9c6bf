"""Sending one message through the SMTP server named by `RUNNER_SMTP_URL`, with smtplib.

URL forms: `smtp://user:pass@host:port` (plain; `?starttls=1` upgrades it),
`smtp+starttls://...` (STARTTLS, port 587 by default) and `smtps://...` (implicit TLS, port 465).
`RUNNER_SMTP_TIMEOUT` (seconds, default 30) bounds connecting and each reply;
`RUNNER_SMTP_CA_FILE` names extra CA certificates to trust (a private relay's own CA).

Replies the server may answer differently later (4xx, dropped or refused connections, timeouts)
raise `SmtpDeliveryDeferred` so the job is retried; 5xx rejections and configuration mistakes
raise `PermanentError` with the server's reply.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

from runner import PermanentError

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
DEFAULT_TIMEOUT_SECONDS = 30.0
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


class SmtpDeliveryDeferred(Exception):
    """Raised when the SMTP server cannot take the message now (4xx, timeout, no connection): retried."""


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect, parsed from RUNNER_SMTP_URL."""

    host: str
    port: int
    security: str  # "plain", "starttls" or "tls"
    username: str = ""
    password: str = ""
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    ca_file: str = ""

    @property
    def where(self) -> str:
        """host:port, for messages (never the credentials)."""
        return f"{self.host}:{self.port}"


def parse_smtp_url(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, ca_file: str = "") -> SmtpTarget:
    """Read an smtp://, smtp+starttls:// or smtps:// URL; PermanentError names what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise PermanentError(f"RUNNER_SMTP_URL must start with smtp://, smtp+starttls:// or smtps://, not {scheme!r}.")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise PermanentError("RUNNER_SMTP_URL has a port that is not a number from 1 to 65535.") from None
    if not parts.hostname:
        raise PermanentError("RUNNER_SMTP_URL names no host.")
    starttls = parse_qs(parts.query).get("starttls", [""])[-1].lower() in TRUE_WORDS
    security = "tls" if scheme == "smtps" else "starttls" if scheme == "smtp+starttls" or starttls else "plain"
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        security=security,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        timeout=timeout,
        ca_file=ca_file,
    )


def deliver(
    target: SmtpTarget, message: EmailMessage, sender: str, recipients: list[str], on_step: Callable[[str], None]
) -> dict[str, tuple[int, str]]:
    """Send `message` to `recipients`; return the recipients the server refused while taking the rest."""
    try:
        on_step("connecting")
        client = _connect(target)
        try:
            if target.security == "starttls":
                client.starttls(context=_tls_context(target))
                client.ehlo()
            if target.username:
                client.login(target.username, target.password)
            on_step("sending")
            refused = client.send_message(message, from_addr=sender, to_addrs=recipients)
        finally:
            _close(client)
    except (smtplib.SMTPException, OSError) as exc:
        raise _classify(exc, target.where) from None
    return {address: (code, _text(reply)) for address, (code, reply) in refused.items()}


def _connect(target: SmtpTarget) -> smtplib.SMTP:
    if target.security == "tls":
        return smtplib.SMTP_SSL(target.host, target.port, timeout=target.timeout, context=_tls_context(target))
    return smtplib.SMTP(target.host, target.port, timeout=target.timeout)


def _tls_context(target: SmtpTarget) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=target.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"RUNNER_SMTP_CA_FILE={target.ca_file!r} cannot be loaded: {exc}") from None


def _close(client: smtplib.SMTP) -> None:
    # The message may already be accepted: a failing QUIT must not turn into a retry (a duplicate).
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _classify(exc: smtplib.SMTPException | OSError, where: str) -> Exception:
    """PermanentError for what retrying cannot fix, SmtpDeliveryDeferred for the rest."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = "; ".join(f"{address}: {code} {_text(reply)}" for address, (code, reply) in exc.recipients.items())
        if all(code >= 500 for code, _ in exc.recipients.values()):
            return PermanentError(f"The SMTP server at {where} refused every recipient: {replies}")
        return SmtpDeliveryDeferred(f"The SMTP server at {where} deferred the recipients: {replies}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(f"The SMTP server at {where} does not support what RUNNER_SMTP_URL asks: {exc}")
    if isinstance(exc, smtplib.SMTPConnectError):  # a greeting refusal is a connection failure: retried
        return SmtpDeliveryDeferred(f"The SMTP server at {where} refused the connection: {exc.smtp_code} "
                                    f"{_text(exc.smtp_error)}")
    if isinstance(exc, smtplib.SMTPResponseException):
        step = _STEPS.get(type(exc), "the request")
        reply = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        if exc.smtp_code >= 500:
            return PermanentError(f"The SMTP server at {where} rejected {step}: {reply}")
        return SmtpDeliveryDeferred(f"The SMTP server at {where} deferred {step}: {reply}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(f"The TLS certificate of the SMTP server at {where} cannot be trusted: "
                              f"{exc.verify_message}")
    # smtplib turns a read timeout into SMTPServerDisconnected; the TimeoutError stays as its context.
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return SmtpDeliveryDeferred(f"The SMTP server at {where} did not answer in time")
    return SmtpDeliveryDeferred(f"Cannot talk to the SMTP server at {where}: {exc}")


_STEPS: dict[type[smtplib.SMTPResponseException], str] = {
    smtplib.SMTPSenderRefused: "the sender",
    smtplib.SMTPDataError: "the message",
    smtplib.SMTPAuthenticationError: "the login",
    smtplib.SMTPHeloError: "the greeting",
}


def _text(reply: bytes | str) -> str:
    return (reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else reply).strip()

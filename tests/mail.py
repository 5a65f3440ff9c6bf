"""E-mail tests' shared pieces: an aiosmtpd handler that records, message readers, and hostile header values.

The hostile values hide a CR/LF (or another line separator) in RFC 2047 encoded words, in every
form the e-mail library decodes: b and q, either case, other charsets, a language tag, several
words (the decoder joins adjacent ones), folded words.
"""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, Envelope, Session

VICTIM = "victim@evil.example"
INJECTION = f"Invoice\r\nBcc: {VICTIM}\r\nContent-Type: text/html\r\n\r\n<h1>Pay</h1>"
# Every header a message we build has, and nothing else.
MESSAGE_HEADERS = frozenset({"from", "to", "subject", "date", "message-id", "auto-submitted", "content-type",
                             "content-transfer-encoding", "mime-version"})


def b_word(text: str, charset: str = "utf-8", marker: str = "b") -> str:
    """`text` as one RFC 2047 encoded word in base64 (bytes in UTF-8, whatever `charset` says, or Latin-1)."""
    data = text.encode("latin-1" if charset == "iso-8859-1" else "utf-8")
    return f"=?{charset}?{marker}?{base64.b64encode(data).decode()}?="


def q_word(text: str, charset: str = "utf-8", marker: str = "q") -> str:
    """`text` as one RFC 2047 encoded word in the Q encoding (every byte but ASCII letters and digits escaped)."""
    data = text.encode("latin-1" if charset == "iso-8859-1" else "utf-8")
    encoded = "".join(chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else "_" if byte == 32
                      else f"={byte:02X}" for byte in data)
    return f"=?{charset}?{marker}?{encoded}?="


# (id, subject): each decodes to a value with a line break in it.
INJECTED_SUBJECTS = [
    ("b", b_word(INJECTION)),
    ("B-upper", b_word(INJECTION, "UTF-8", "B")),
    ("q", q_word(INJECTION)),
    ("Q-upper", q_word(INJECTION, "UTF-8", "Q")),
    ("latin-1", q_word(INJECTION, "iso-8859-1")),
    ("language-tag", q_word(INJECTION, "utf-8*en")),
    ("unknown-charset", q_word(INJECTION, "x-unknown")),
    ("after-plain-text", "Hello " + q_word(f"\r\nBcc: {VICTIM}")),
    ("split-over-two-words", b_word("Invoice\r") + " " + b_word(f"\nBcc: {VICTIM}")),
    ("word-per-character", " ".join(b_word(char) for char in f"Invoice\r\nBcc: {VICTIM}")),
    ("folded", b_word("Invoice") + "\r\n " + b_word(f"\r\nBcc: {VICTIM}")),
    ("folded-tab", b_word("Invoice") + "\n\t" + b_word(f"\nBcc: {VICTIM}")),
    ("lf-only", b_word(f"Invoice\nBcc: {VICTIM}")),
    ("cr-only", b_word(f"Invoice\rBcc: {VICTIM}")),
    ("line-separator", b_word(f"Invoice\u2028Bcc: {VICTIM}")),
    ("next-line-latin-1", q_word(f"Invoice\x85Bcc: {VICTIM}", "iso-8859-1")),
]
# (id, address): addresses whose local part is an encoded word (RFC 2047 forbids them; the library decodes them).
INJECTED_ADDRESSES = [
    ("b-crlf", b_word(f"x\r\nBcc: {VICTIM}") + "@example.com"),
    ("q-crlf", q_word(f"x\r\nBcc: {VICTIM}") + "@example.com"),
    ("q-harmless", q_word("alice") + "@example.com"),
    ("b-display-name", b_word(f"Boss <{VICTIM}>") + "@example.com"),
]


def assert_only_our_headers(raw: bytes, subject: str, recipients: list[str]) -> EmailMessage:
    """`raw` (a plain-text message) starts header lines for our headers only, with this subject and recipients."""
    header_block = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    # A header starts where a line does not begin with white space (which continues a folded one).
    started = sorted(line.split(b":", 1)[0].decode().lower() for line in header_block.split(b"\n")
                     if line and not line[:1].isspace())
    assert started == sorted(MESSAGE_HEADERS), started
    message = parse(raw)
    assert (message["Subject"], message["To"]) == (subject, ", ".join(recipients))
    assert message.get_content_type() == "text/plain" and not message.is_multipart()
    return message


def parse(raw: bytes) -> EmailMessage:
    """A message read back with the modern email API."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def text_and_html(message: EmailMessage) -> tuple[str, str | None]:
    """The plain-text body and the HTML alternative (None when there is none), with LF line ends."""
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert isinstance(plain, EmailMessage)
    # Messages travel with CRLF line ends; the outbox keeps LF.
    return (
        plain.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n") if isinstance(html, EmailMessage) else None,
    )


class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted envelope; replies can be set per command."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget recorded envelopes and answer every command with success again."""
        self.envelopes: list[Envelope] = []
        self.mail_reply = ""
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = ""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def message(self) -> EmailMessage:
        """The one message received so far."""
        (envelope,) = self.envelopes
        assert isinstance(envelope.content, bytes)
        return parse(envelope.content)



"""Header values that stay what they say once the e-mail library has read them.

The library decodes RFC 2047 encoded words (`=?utf-8?b?...?=`) when a header is set and writes
the decoded text out again when the message is serialized: a CR/LF hidden in an encoded word
becomes a real line break, which starts a header (Bcc: ...) or the body of its own. So every
value is judged as the library reads it, not as the caller typed it, and the serialized message
is read back to check that it holds exactly the headers that were set.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from email import policy
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.parser import BytesParser

# ASCII addresses only (no quoted local parts, no IP literals, no SMTPUTF8): what every relay accepts.
LOCAL_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN = rf"(?:{LABEL}\.)+[A-Za-z]{{2,63}}"
ADDRESS = re.compile(rf"{LOCAL_PART}@{DOMAIN}")
# The configured sender may be a host-local mailbox such as the default runner@localhost.
LOCAL_ADDRESS = re.compile(rf"{LOCAL_PART}@(?:{LABEL}\.)*{LABEL}")
MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
# Unicode line separators that some mail tools also treat as line ends.
LINE_SEPARATORS = frozenset("\u2028\u2029\x85")
ENCODED_WORD_START = "=?"


class UnsafeHeader(ValueError):
    """A header value that is not what it looks like once decoded; the message says why."""


def has_line_break(text: str) -> bool:
    """True when `text` holds a control character or a Unicode line separator."""
    return any(char in LINE_SEPARATORS or unicodedata.category(char) == "Cc" for char in text)


def decoded_text(value: str) -> str:
    """An unstructured header value (Subject) as the e-mail library reads it: encoded words decoded."""
    return str(policy.default.header_factory("subject", value))


def check_text(value: str, what: str = "the value") -> str:
    """`value` if neither it nor its decoded form holds a line break or control character."""
    if has_line_break(value) or has_line_break(decoded_text(value)):
        raise UnsafeHeader(f"{what} must not contain line breaks or other control characters, "
                           "encoded (RFC 2047) or not")
    return value


def check_address(value: str, pattern: re.Pattern[str] = ADDRESS) -> str:
    """`value` if it is one plain address (no display name) that the e-mail library reads back unchanged."""
    local = value.rpartition("@")[0]
    if not pattern.fullmatch(value) or len(value) > MAX_ADDRESS_LENGTH or len(local) > MAX_LOCAL_PART_LENGTH:
        raise UnsafeHeader(f"{value[:100]!r} is not a valid email address")
    # RFC 2047 forbids encoded words in an address, but the library decodes them there too.
    if ENCODED_WORD_START in value or _read_back(value) != value:
        raise UnsafeHeader(f"{value[:100]!r} is not a valid email address (it holds an RFC 2047 encoded word)")
    return value


def _read_back(address: str) -> str | None:
    try:
        header = policy.default.header_factory("to", address)
    except (HeaderParseError, ValueError):  # ValueError: an address part that decodes to CR or LF
        return None
    addresses = header.addresses  # type: ignore[attr-defined]
    if header.defects or len(addresses) != 1 or addresses[0].display_name:
        return None
    return str(addresses[0].addr_spec)


def check_serialized(message: EmailMessage) -> None:
    """Raise UnsafeHeader unless `message`, written out and read back, has the same headers and parts."""
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    written = [(name.lower(), str(value)) for name, value in message.items()]
    read = [(name.lower(), str(value)) for name, value in parsed.items()]
    if read != written or len(list(parsed.walk())) != len(list(message.walk())):
        added = Counter(name for name, _ in read) - Counter(name for name, _ in written)
        names = sorted(added.elements())
        raise UnsafeHeader(f"the message would not be sent as built (headers added: {', '.join(names) or 'none'})")

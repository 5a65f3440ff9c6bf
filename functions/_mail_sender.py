"""Who a message is from: the configured sender, or an address the operator lets callers choose.

`RUNNER_SMTP_FROM` (default runner@localhost) is the sender of every message, in the From header
and in the SMTP envelope. A caller's `from_address` is accepted only when it is that address or
is listed in `RUNNER_SMTP_ALLOWED_FROM` (comma-separated): `ops@example.com` allows that address,
`*@example.com` any address at exactly that domain (not its subdomains). A lone `*` or any other
pattern (a `*` anywhere else) is a configuration error: letting callers send as anyone is what
the list prevents.
"""

from __future__ import annotations

from functions._env_settings import env_text
from functions._mail_headers import ADDRESS, LOCAL_ADDRESS, UnsafeHeader, check_address
from runner import PermanentError

DEFAULT_SENDER = "runner@localhost"
DOMAIN_WILDCARD = "*@"


def configured_sender() -> str:
    """RUNNER_SMTP_FROM; PermanentError when it is not a plain address."""
    sender = env_text("RUNNER_SMTP_FROM", DEFAULT_SENDER)
    try:
        return check_address(sender, LOCAL_ADDRESS)
    except UnsafeHeader:
        raise PermanentError(f"RUNNER_SMTP_FROM={sender[:100]!r} is not a valid email address.") from None


def allowed_senders() -> tuple[frozenset[str], frozenset[str]]:
    """The addresses (exact) and domains (lower case) of RUNNER_SMTP_ALLOWED_FROM; PermanentError on a bad entry."""
    addresses: set[str] = set()
    domains: set[str] = set()
    for entry in (item.strip() for item in env_text("RUNNER_SMTP_ALLOWED_FROM").split(",")):
        if not entry:
            continue
        if entry.startswith(DOMAIN_WILDCARD) and ADDRESS.fullmatch(f"x{entry[1:]}"):
            domains.add(entry[len(DOMAIN_WILDCARD):].lower())
            continue
        try:
            if "*" in entry:  # a legal address character, but here it would be read as a wildcard it is not
                raise UnsafeHeader(entry)
            addresses.add(check_address(entry, LOCAL_ADDRESS))
        except UnsafeHeader:
            raise PermanentError(f"RUNNER_SMTP_ALLOWED_FROM holds {entry[:100]!r}, which is neither an address "
                                 "nor '*@<domain>'.") from None
    return frozenset(addresses), frozenset(domains)


def sender_refusal(from_address: str) -> str | None:
    """Why a caller may not send as `from_address` (None when it may); PermanentError on bad configuration."""
    if from_address == configured_sender():
        return None
    addresses, domains = allowed_senders()
    if from_address in addresses or from_address.rpartition("@")[2].lower() in domains:
        return None
    return (f"{from_address[:100]!r} is not an allowed sender: leave from_address out to send as the configured "
            "sender, or ask the operator to list it in RUNNER_SMTP_ALLOWED_FROM")


def choose_sender(from_address: str | None) -> str:
    """The envelope and header sender: `from_address` when allowed, else the configured sender."""
    if from_address is None:
        return configured_sender()
    refusal = sender_refusal(from_address)
    if refusal is not None:
        raise PermanentError(f"{refusal}.")
    return from_address


def check_allowed_sender(from_address: str) -> str:
    """The input validator: `from_address` if allowed, ValueError otherwise (a 422 before anything is enqueued)."""
    try:
        refusal = sender_refusal(from_address)
    except PermanentError as exc:  # the operator's mistake, but still no 500 for the caller
        raise ValueError(str(exc)) from None
    if refusal is not None:
        raise ValueError(refusal)
    return from_address


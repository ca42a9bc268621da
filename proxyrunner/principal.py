"""Who a request comes from, once its access token has been validated, and the short
hashes that stand in for identifiers in logs, metrics and session records.

A ``Principal`` is built by the identity layer from a validated JWT or an introspection
answer; the authorization, audit and session-binding code read it. It never holds the
token itself, so nothing that receives a principal can pass a token on.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

_HASH_CHARS: Final = 12


@functools.lru_cache(maxsize=1024)  # a traced request hashes its session's id each time
def short_hash(value: str) -> str:
    """A short, stable, non-reversible stand-in for an identifier (a session id, a
    subject) in logs and metrics: 48 bits of SHA-256, enough to tell sessions apart in a
    log, too few to be worth anything to someone who reads the log."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    issuer: str
    """The token's ``iss``: subjects are only unique per issuer."""
    subject: str
    """The token's ``sub``."""
    client_id: str | None = None
    """The OAuth client the token was issued to (``client_id``, ``azp`` or ``cid``)."""
    scopes: frozenset[str] = frozenset()
    """The token's scopes (``scope``, space-separated, or ``scp``)."""
    expires_at: float | None = None
    """Unix time the token expires (``exp``), when it says."""
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Every claim of the token (or introspection answer), for authorization policies.
    Never logged."""

    @property
    def binding(self) -> str:
        """What a session records of its creator: a hash of issuer and subject, so that a
        session record in Redis names no one, yet only the same principal matches it."""
        digest = hashlib.sha256()
        digest.update(self.issuer.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
        digest.update(self.subject.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:32]

    @property
    def subject_hash(self) -> str:
        """The subject as logs and audit lines may show it at info level."""
        return short_hash(f"{self.issuer}\0{self.subject}")

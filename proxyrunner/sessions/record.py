"""The session record: everything any replica needs to serve a client's session.

It is stored as versioned JSON so that replicas running different releases during a
rollout can read each other's records; a record of an unknown version is treated as absent
(the client re-initializes) rather than misread.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Final

RECORD_VERSION: Final = 1

_ID_BYTES: Final = 32
# token_urlsafe(32): 32 bytes in unpadded URL-safe base64 are always 43 characters.
_ID_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{43}")


def new_session_id() -> str:
    """A proxy-owned session id: 256 random bits, URL-safe visible ASCII (the spec asks for
    visible ASCII 0x21-0x7E; clients and logs handle this alphabet without quoting)."""
    return secrets.token_urlsafe(_ID_BYTES)


def could_be_session_id(value: str) -> bool:
    """Whether ``value`` has the shape of an id this proxy mints. One that does not cannot
    name a session, so it is answered without asking Redis."""
    return _ID_SHAPE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    """The id the client sees (minted by the proxy)."""
    backend: str
    """Identity of the backend holding the session: a local backend name or a pod name."""
    backend_session_id: str | None
    """The backend's own Mcp-Session-Id; None for a backend that issues none."""
    protocol_version: str | None
    """Negotiated MCP protocol revision, when known."""
    transport: str
    """How the client reached us: "streamable-http" or "sse"."""
    created: float
    """Unix time of creation."""
    last_used: float
    """Unix time of last use as last written to the store (refreshes are coalesced)."""
    init_request: str | None = None
    """The client's initialize request body, replayed to re-initialize on another backend."""
    principal: str | None = None
    """``Principal.binding`` of the session's creator (a hash of issuer and subject), or
    None on an unauthenticated endpoint. Every replica refuses the session to anyone else."""

    def to_json(self) -> str:
        doc: dict[str, Any] = {"v": RECORD_VERSION, **asdict(self)}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> SessionRecord | None:
        """Decode a stored record; None when it is not a record this release understands."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.pop("v", None) != RECORD_VERSION:
                return None
            return cls(**doc)
        except (ValueError, TypeError):
            return None

"""RFC 9728 protected-resource metadata, and the Bearer challenges that point to it.

Every URL here comes from ``oidc_config.resource_url``, never from the request: behind
a load balancer the request's Host and X-Forwarded-* headers are the client's to choose,
and a client that could choose the metadata URL could send other clients to its own
authorization server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from aiohttp import web
from yarl import URL

from proxyrunner.config.oidc import OIDCConfig

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"


class ProtectedResource:
    def __init__(self, oidc: OIDCConfig) -> None:
        resource = URL(oidc.resource_url)
        self.resource = oidc.resource_url
        # RFC 9728 section 3.1: the well-known path goes between host and resource path.
        suffix = resource.path.rstrip("/")
        self.metadata_path = WELL_KNOWN + suffix
        self.metadata_url = str(resource.with_path(self.metadata_path).with_query(None))
        self._body = json.dumps(
            {
                "resource": oidc.resource_url,
                "authorization_servers": [oidc.issuer],
                "scopes_supported": list(oidc.scopes or oidc.required_scopes),
                "bearer_methods_supported": ["header"],
            }
        ).encode()
        self._base = f'Bearer resource_metadata="{self.metadata_url}"'

    def paths(self, route_paths: Sequence[str]) -> list[str]:
        """Where the document is served: the bare well-known path, the resource's own
        path-suffixed form, and that form for each MCP route (a client that knows only
        the route it was given, e.g. /mcp, finds it too)."""
        found = [WELL_KNOWN, self.metadata_path, *(WELL_KNOWN + p for p in route_paths)]
        return list(dict.fromkeys(found))

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._body,
            content_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    def challenge(
        self, error: str | None = None, description: str | None = None, scope: str | None = None
    ) -> str:
        """A WWW-Authenticate value (RFC 6750 section 3). ``description`` is a fixed
        text of ours, never anything taken from the token."""
        parts = [self._base]
        if error is not None:
            parts.append(f'error="{error}"')
        if description is not None:
            parts.append(f'error_description="{_quoted(description)}"')
        if scope is not None:
            parts.append(f'scope="{_quoted(scope)}"')
        return ", ".join(parts)


def _quoted(text: str) -> str:
    # RFC 6750 allows %x20-21 / %x23-5B / %x5D-7E inside the quotes.
    return "".join(c for c in text if 0x20 <= ord(c) <= 0x7E and c not in '"\\')

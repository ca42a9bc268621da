"""Authorization server metadata (RFC 8414, or OpenID Connect discovery) of an issuer.

Only the endpoints the resource server uses are kept. The document must name the very
issuer it was fetched for: otherwise anyone who can answer at one of the well-known
URLs could point us at their own keys (RFC 8414 section 3.3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from proxyrunner.identity.claims import where
from proxyrunner.identity.errors import DiscoveryFailed

# A metadata document is a few kilobytes; more is not one.
MAX_DOCUMENT_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class AuthServerMetadata:
    issuer: str
    jwks_uri: str | None = None
    introspection_endpoint: str | None = None
    token_endpoint: str | None = None
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def metadata_urls(issuer: str) -> list[str]:
    """Where to look, in order. For an issuer with a path, RFC 8414 inserts the
    well-known segment between host and path; OpenID Connect appends it, and some
    servers only answer the inserted form of that too."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(well_known: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, well_known, "", ""))

    urls = [at(f"/.well-known/oauth-authorization-server{path}")]
    if path:
        urls.append(at(f"/.well-known/openid-configuration{path}"))
    urls.append(at(f"{path}/.well-known/openid-configuration"))
    return urls


async def read_json(response: aiohttp.ClientResponse, limit: int) -> Any:
    """The body as JSON, refusing bodies over ``limit`` bytes before reading them all."""
    body = await response.content.read(limit + 1)
    if len(body) > limit:
        raise ValueError(f"answer larger than {limit} bytes")
    return json.loads(body)


async def discover(http: aiohttp.ClientSession, issuer: str) -> AuthServerMetadata:
    """The issuer's metadata, from the first well-known URL that has it.

    Raises DiscoveryFailed naming each URL's host and what went wrong there."""
    problems: list[str] = []
    for url in metadata_urls(issuer):
        try:
            async with http.get(url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    problems.append(f"HTTP {response.status} at {urlsplit(url).path}")
                    continue
                document = await read_json(response, MAX_DOCUMENT_BYTES)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            problems.append(f"{type(exc).__name__} at {urlsplit(url).path}")
            continue
        if not isinstance(document, dict):
            problems.append(f"not a JSON object at {urlsplit(url).path}")
            continue
        if document.get("issuer") != issuer:
            # Not "try the next one": a server that names another issuer is misconfigured
            # or hostile, and the next URL is served by the same host.
            raise DiscoveryFailed(
                f"the metadata at {where(url)}{urlsplit(url).path} names another issuer"
            )
        return AuthServerMetadata(
            issuer=issuer,
            jwks_uri=_url(document, "jwks_uri"),
            introspection_endpoint=_url(document, "introspection_endpoint"),
            token_endpoint=_url(document, "token_endpoint"),
            document=document,
        )
    raise DiscoveryFailed(
        f"no authorization server metadata for the issuer at {where(issuer)}: "
        + "; ".join(problems)
    )


def _url(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
        raise DiscoveryFailed(f"the issuer's metadata has an invalid {name}")
    return value

"""The identity side of the pipeline, built from the RunConfig: token validation against
the IdP, the outbound credential, Cedar authorization and the audit log.

``build_guard`` returns the ``Guard`` the server composes (stages, protected-resource
metadata, health for /readyz) and what must be closed at shutdown. Everything that talks
to the IdP shares one aiohttp session with short timeouts, and every request it makes
is counted in ``proxyrunner_idp_requests_total{kind}``: a warm request makes none.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import aiohttp
import structlog

from proxyrunner.config import RunConfig, Secrets
from proxyrunner.config.oidc import OIDCConfig
from proxyrunner.errors import StartupError
from proxyrunner.identity.discovery import discover
from proxyrunner.identity.errors import InvalidToken, TokenExchangeFailed
from proxyrunner.identity.exchange import TokenExchanger
from proxyrunner.identity.introspection import Introspector
from proxyrunner.identity.jwt import JwtValidator
from proxyrunner.identity.keys import KeySet
from proxyrunner.identity.outbound import ExchangedCredential, StaticCredential
from proxyrunner.identity.validator import TokenValidator
from proxyrunner.metrics import Metrics
from proxyrunner.principal import Principal
from proxyrunner.proxy.parts import Guard
from proxyrunner.proxy.pipeline import Stage
from proxyrunner.proxy.policy import load_policies, open_policy_stages
from proxyrunner.proxy.protected_resource import ProtectedResource
from proxyrunner.proxy.stages.authentication import (
    Authentication,
    FixedBackendCredential,
    Outbound,
)

Closer = tuple[str, Callable[[], Awaitable[object]]]

_IDP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


def _counting(metrics: Metrics, oidc: OIDCConfig) -> aiohttp.TraceConfig:
    """Counts each request to the IdP by what it was for."""
    counter = metrics.idp_requests
    jwks = oidc.jwks_url

    async def started(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        url, path = str(params.url), params.url.path
        if url == jwks or "jwks" in path or path.endswith("/certs"):
            kind = "jwks"
        elif "/.well-known/" in path:
            kind = "discovery"
        elif "introspect" in path:
            kind = "introspection"
        else:
            kind = "token"
        counter.labels(kind).inc()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    return trace


def _idp_session(oidc: OIDCConfig, metrics: Metrics) -> aiohttp.ClientSession:
    tls: ssl.SSLContext | bool = True
    if oidc.ca_cert_path:
        try:
            tls = ssl.create_default_context(cafile=oidc.ca_cert_path)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"oidc_config.ca_cert_path: cannot load {oidc.ca_cert_path}: {exc}"
            ) from exc
    return aiohttp.ClientSession(
        timeout=_IDP_TIMEOUT,
        connector=aiohttp.TCPConnector(ssl=tls, limit=32),
        trace_configs=[_counting(metrics, oidc)],
        raise_for_status=False,
    )


class _Introspection:
    """RFC 7662 for opaque tokens, at the configured endpoint or the one the issuer's
    metadata names (looked up on first use: the IdP may be down at startup)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        oidc: OIDCConfig,
        secret: str,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._http, self._oidc, self._secret, self._log = http, oidc, secret, log
        self._introspector: Introspector | None = None
        if oidc.introspection_url:
            self._introspector = self._make(oidc.introspection_url)

    def _make(self, endpoint: str) -> Introspector:
        oidc = self._oidc
        return Introspector(
            self._http,
            endpoint,
            oidc.client_id,
            self._secret,
            issuer=oidc.issuer,
            audience=oidc.expected_audience,
            log=self._log.bind(component="introspection"),
        )

    async def validate(self, token: str) -> Principal:
        if self._introspector is None:
            try:
                metadata = await discover(self._http, self._oidc.issuer)
            except Exception as exc:
                self._log.warning("issuer metadata unavailable", error=exc.__class__.__name__)
                raise InvalidToken(
                    "idp_unavailable", "the authorization server cannot be reached"
                ) from None
            if not metadata.introspection_endpoint:
                raise InvalidToken("invalid_token", "opaque tokens are not accepted here")
            self._introspector = self._make(metadata.introspection_endpoint)
        return await self._introspector.validate(token)

    def health(self) -> tuple[bool, str]:
        if self._introspector is None:
            return True, "introspection endpoint not looked up yet"
        return self._introspector.health()

    async def close(self) -> None:
        if self._introspector is not None:
            await self._introspector.close()


def build_guard(
    config: RunConfig,
    secrets: Secrets,
    metrics: Metrics,
    log: structlog.stdlib.BoundLogger,
    replica: str = "",
) -> tuple[Guard, list[Closer]]:
    """The stages and metadata for ``config``'s identity, authorization and audit
    settings; an empty Guard when it has none. ``replica`` names this process in audit
    events (the pod name; the server's name when empty)."""
    # Policies first: a bad one stops the start before anything is opened. Then the
    # audit log, which holds no connection: nothing to clean up if the IdP part fails.
    policy = open_policy_stages(config, load_policies(config), metrics, log, replica or config.name)
    identity = config.identity
    oidc = identity.oidc
    closers: list[Closer] = []
    if policy.close is not None:
        closers.append(("audit log", policy.close))  # closed last: after the listener
    stages: list[Stage] = []
    health: list[Callable[[], tuple[bool, str]]] = []
    resource: ProtectedResource | None = None
    if oidc is not None:
        http = _idp_session(oidc, metrics)
        closers.append(("identity provider client", http.close))
        keys = KeySet(
            http, oidc.jwks_url or None, issuer=oidc.issuer, log=log.bind(component="jwks")
        )
        introspection = None
        if oidc.client_id and secrets.oidc_client_secret:
            introspection = _Introspection(http, oidc, secrets.oidc_client_secret, log)
        validator = TokenValidator(
            JwtValidator(keys, oidc.issuer, oidc.expected_audience), introspection
        )
        validator.start()
        closers.append(("token validation", validator.close))
        health.append(_combined(keys.health, introspection))
        resource = ProtectedResource(oidc)
        outbound, outbound_closers = _outbound(config, secrets, http)
        closers.extend(outbound_closers)
        stages.append(
            Authentication(
                validator,
                InvalidToken,
                resource,
                metrics,
                required_scopes=oidc.required_scopes,
                outbound=outbound,
                outbound_failure=TokenExchangeFailed,
            )
        )
    elif identity.backend_auth is not None:
        assert secrets.backend_auth_value is not None, "read at startup"
        stages.append(
            FixedBackendCredential(identity.backend_auth.header, secrets.backend_auth_value)
        )
    stages = [*policy.before, *stages, *policy.after]
    return Guard(stages=stages, resource=resource, health=health), closers


def _combined(
    keys: Callable[[], tuple[bool, str]], introspection: _Introspection | None
) -> Callable[[], tuple[bool, str]]:
    """Unready only when no token could be validated at all."""

    def check() -> tuple[bool, str]:
        usable, reason = keys()
        if introspection is None:
            return usable, reason
        other_usable, other = introspection.health()
        return usable or other_usable, f"{reason}; {other}"

    return check


def _outbound(
    config: RunConfig, secrets: Secrets, http: aiohttp.ClientSession
) -> tuple[Outbound | None, list[Closer]]:
    identity = config.identity
    if identity.backend_auth is not None:
        assert secrets.backend_auth_value is not None, "read at startup"
        return StaticCredential(identity.backend_auth.header, secrets.backend_auth_value), []
    exchange = identity.token_exchange
    if exchange is not None:
        assert secrets.token_exchange_client_secret is not None, "read at startup"
        exchanger = TokenExchanger(
            http,
            exchange.token_url,
            exchange.client_id,
            secrets.token_exchange_client_secret,
            exchange.audience,
            exchange.scopes,
            exchange.subject_token_type,
        )
        credential = ExchangedCredential(exchanger, exchange.header_name)
        return credential, [("token exchange", exchanger.close)]
    return None, []

"""An MCPServer's oidcConfig, authzConfig and audit, rendered by the operator on a real
kube-apiserver: the RunConfig the proxy reads authenticates, authorizes and audits, its
secrets come from Secrets, its policies from the mounted ConfigMap; and a form the
operator cannot render is refused, never served as an open endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxyrunner.authz.files import load_authz_file
from proxyrunner.config import parse_config, secrets_from_env
from tests.kube.helpers import KubeCluster
from tests.kube.operator_helpers import (
    apply_server,
    child_names,
    condition,
    install_crd,
    observed,
    read,
    running_operator,
)
from tests.procs import eventually

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]

SETTLE = 30.0
POLICIES = ['permit(principal, action == Action::"call_tool", resource == Tool::"echo");']


@pytest.fixture
def crd_namespace(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    install_crd(kube_cluster)
    return kube_namespace


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


async def test_an_inline_oidc_config_and_authz_configmap_render_a_guarded_proxy(
    kube_cluster: KubeCluster, crd_namespace: str, tmp_path: Path
) -> None:
    ns = crd_namespace
    apply_server(
        kube_cluster,
        ns,
        "guarded",
        {
            "image": "ghcr.io/example/fetch:1",
            "transport": "streamable-http",
            "oidcConfig": {
                "type": "inline",
                "resourceUrl": "https://mcp.example.com/mcp",
                "inline": {
                    "issuer": "https://idp.example.com",
                    "audience": "mcp-fetch",
                    "clientId": "fetch-proxy",
                    "clientSecretRef": {"name": "fetch-oidc", "key": "secret"},
                    "caBundleRef": {"configMapRef": {"name": "idp-ca"}},
                    "scopes": ["mcp:tools"],
                },
            },
            "authzConfig": {"type": "configMap", "configMap": {"name": "fetch-policies"}},
            "audit": {"enabled": True},
        },
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "guarded", 1), SETTLE, "status")

    server = read(kube_cluster, ns, "MCPServer", "guarded")
    assert server is not None
    ignored = condition(server, "UnsupportedFieldsIgnored")
    assert ignored is None or ignored["status"] == "False", ignored
    configmap = read(kube_cluster, ns, "ConfigMap", child_names("guarded")["ConfigMap"])
    assert configmap is not None
    text = configmap["data"]["runconfig.json"]
    config, unknown = parse_config(json.loads(text))  # as the proxy reads it
    assert unknown == ()
    oidc = config.identity.oidc
    assert oidc is not None
    assert (oidc.issuer, oidc.expected_audience, oidc.client_id) == (
        "https://idp.example.com",
        "mcp-fetch",
        "fetch-proxy",
    )
    assert oidc.resource_url == "https://mcp.example.com/mcp"
    assert oidc.ca_cert_path == "/etc/proxyrunner/ca/ca.crt"
    assert config.policy.authz_path == "/etc/proxyrunner/authz/authz.json"
    assert config.policy.audit is not None

    deployment = read(kube_cluster, ns, "Deployment", "guarded")
    assert deployment is not None
    pod = _pod(deployment)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["THV_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "fetch-oidc",
        "key": "secret",
    }
    # The secret is the proxy's to read from its env, exactly where the daemon looks.
    secrets = secrets_from_env({"THV_OIDC_CLIENT_SECRET": "from-the-secret"}, config)
    assert secrets.oidc_client_secret == "from-the-secret"
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/proxyrunner/authz"]]["configMap"]["name"] == "fetch-policies"
    assert volumes[mounts["/etc/proxyrunner/ca"]]["configMap"]["name"] == "idp-ca"

    # What ToolHive puts in such a ConfigMap is what the proxy loads from the mount.
    policy_file = tmp_path / "authz.json"
    policy_file.write_text(
        json.dumps({"version": "1.0", "type": "cedarv1", "cedar": {"policies": POLICIES}})
    )
    assert load_authz_file(policy_file).policies == tuple(POLICIES)


async def test_inline_policies_land_in_the_runconfig(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(
        kube_cluster,
        ns,
        "inline-authz",
        {
            "image": "x:1",
            "transport": "streamable-http",
            "authzConfig": {"type": "inline", "inline": {"policies": POLICIES}},
        },
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "inline-authz", 1), SETTLE, "status")
    configmap = read(kube_cluster, ns, "ConfigMap", child_names("inline-authz")["ConfigMap"])
    assert configmap is not None
    config, _ = parse_config(json.loads(configmap["data"]["runconfig.json"]))
    assert config.policy.authz is not None
    assert config.policy.authz.policies == tuple(POLICIES)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("oidcConfig", {"type": "kubernetes"}, "spec.oidcConfig.type"),
        ("oidcConfigRef", {"name": "shared-oidc"}, "spec.oidcConfigRef"),
        ("externalAuthConfigRef", {"name": "exchange"}, "spec.externalAuthConfigRef"),
        ("tools", ["fetch"], "spec.tools"),
        ("rateLimiting", {"requestsPerMinute": 10}, "spec.rateLimiting"),
        (
            "authzConfig",
            {"type": "inline", "inline": {"policies": ["permit(principal"]}},
            "spec.authzConfig.inline",
        ),
    ],
)
async def test_identity_the_operator_cannot_render_is_refused_not_served_open(
    kube_cluster: KubeCluster, crd_namespace: str, field: str, value: Any, named: str
) -> None:
    ns = crd_namespace
    name = "refused-" + field.lower()[:20]
    apply_server(kube_cluster, ns, name, {"image": "x:1", field: value})
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, name, 1), SETTLE, "status")
    server = read(kube_cluster, ns, "MCPServer", name)
    ready = condition(server, "Ready")
    assert ready is not None
    assert ready["reason"] == "InvalidSpec"
    assert named in ready["message"]
    assert read(kube_cluster, ns, "Deployment", name) is None

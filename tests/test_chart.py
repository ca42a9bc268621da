"""The Helm chart: lint-clean, and what it renders is what a platform team relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from proxyrunner.authz.cedar import CedarAuthorizer
from proxyrunner.authz.files import load_authz_file
from proxyrunner.config import parse_config, secrets_from_env
from proxyrunner.config.audit import AUDIT_CONFIG, EVENT_TYPES
from proxyrunner.config.oidc import (
    OIDC_CLIENT_SECRET_ENV,
    TOKEN_EXCHANGE_CLIENT_SECRET_ENV,
    read_token_exchange,
)
from proxyrunner.kube.rbac import proxy_role_rules
from tests.chart import (
    CHART,
    CI_VALUES,
    REPO,
    SCHEMA_REFUSAL,
    by_kind,
    helm,
    mounted_source,
    only,
    proxy_container,
    render,
    runconfig_of,
    schema_refusal,
    secret_env,
)

pytestmark = pytest.mark.timeout(120)


IDENTITY = CHART / "ci" / "identity-values.yaml"
IDENTITY_FILES = CHART / "ci" / "identity-files-values.yaml"
TOKEN_EXCHANGE = CHART / "ci" / "token-exchange-values.yaml"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_chart_lints_clean(values: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_the_proxy_loads_exactly_the_runconfig_the_chart_renders(values: Path) -> None:
    parse_config(runconfig_of(render(values)))


def test_no_replicas_field_when_the_hpa_owns_the_count() -> None:
    docs = render(CHART / "ci" / "redis-hpa-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    fixed = by_kind(render(CHART / "ci" / "default-values.yaml"), "Deployment")[0]
    assert fixed["spec"]["replicas"] == 2


def test_redis_password_comes_from_the_secret_and_never_the_configmap() -> None:
    docs = render(CHART / "ci" / "redis-hpa-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    secret = env["THV_SESSION_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "redis-auth", "key": "password"}
    (configmap,) = by_kind(docs, "ConfigMap")
    assert "password" not in configmap["data"]["runconfig.json"].lower()
    assert "fieldRef" in json.dumps(env["THV_MCPSERVER_GENERATION"])
    assert "fieldRef" in json.dumps(env["POD_NAMESPACE"])


def test_a_runconfig_change_rolls_the_pods() -> None:
    def checksum(*sets: str) -> str:
        (deployment,) = by_kind(render(None, "default", *sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/runconfig"])

    assert checksum() == checksum()
    assert checksum() != checksum("runConfig.backend_replicas=3")


def test_role_grants_exactly_the_rendered_rules_for_the_configured_server() -> None:
    (role,) = by_kind(render(CHART / "ci" / "default-values.yaml"), "Role")
    (configmap,) = by_kind(render(CHART / "ci" / "default-values.yaml"), "ConfigMap")
    name = json.loads(configmap["data"]["runconfig.json"])["name"]
    assert role["rules"] == proxy_role_rules(name)  # named objects; the RunConfig is mounted


def test_no_rbac_for_the_local_runtime() -> None:
    docs = render(CHART / "ci" / "local-remote-values.yaml")
    assert not by_kind(docs, "Role")
    assert not by_kind(docs, "RoleBinding")


def test_grace_period_exceeds_drain_timeout() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25
    result = helm("template", "r", str(CHART), "--set", "terminationGracePeriodSeconds=20")
    assert result.returncode != 0
    assert (
        "terminationGracePeriodSeconds (20) must be greater than runConfig.drain_timeout (25s)"
        in result.stderr
    ), result.stderr


def test_pods_run_with_secure_defaults() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize(
    ("setting", "where", "rule"),
    [
        ("runConfig.port=eighty", "at '/runConfig/port'", "want integer"),
        ("service.port=0", "at '/service/port'", "minimum"),
        ("unknownTopLevel=1", "at ''", "'unknownTopLevel' not allowed"),
    ],
)
def test_schema_rejects_bad_values_naming_where_and_why(
    setting: str, where: str, rule: str
) -> None:
    result = helm("template", "r", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert SCHEMA_REFUSAL in result.stderr
    assert where in result.stderr, result.stderr
    assert rule in result.stderr, result.stderr


def test_a_password_in_session_redis_is_refused(tmp_path: Path) -> None:
    values = tmp_path / "v.yaml"
    values.write_text("runConfig:\n  name: x\n  session_redis:\n    password: hunter2\n")
    refusal = schema_refusal("-f", str(values))
    assert "at '/runConfig/session_redis'" in refusal, refusal
    assert "hunter2" not in refusal


# ------------------------------------------------------------------------- identity

# What the parts of the daemon wired today can load: the identity examples without the
# two fields still refused on this branch (authz_config_path, audit_config).
_WIRED_TODAY = ("authz.enabled=false", "audit.enabled=false")


def test_without_identity_values_nothing_of_identity_is_rendered() -> None:
    docs = render()
    runconfig = runconfig_of(docs)
    for field in ("oidc_config", "token_exchange_config", "backend_auth"):
        assert field not in runconfig
    assert "authz_config_path" not in runconfig
    assert "audit_config" not in runconfig
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == [
        "release-proxyrunner-runconfig"
    ]
    assert set(secret_env(docs)) == set()
    assert {m["name"] for m in proxy_container(docs)["volumeMounts"]} == {"runconfig", "tmp"}


def test_oidc_config_carries_the_values_and_never_a_secret() -> None:
    docs = render(IDENTITY)
    assert runconfig_of(docs)["oidc_config"] == {
        "issuer": "https://idp.example.com/realms/mcp",
        "resource_url": "https://mcp.example.com/mcp",
        "client_id": "proxyrunner",
        "scopes": ["mcp:tools"],
        "required_scopes": ["mcp:tools"],
    }
    for configmap in by_kind(docs, "ConfigMap"):
        text = json.dumps(configmap["data"]).lower()
        assert "client_secret" not in text
        assert "mcp-oidc" not in text  # not even the Secret's name


def test_every_secret_the_proxy_asks_for_is_in_the_environment_the_deployment_gives_it() -> None:
    docs = render(IDENTITY, "default", *_WIRED_TODAY)
    env = secret_env(docs)
    assert env == {
        OIDC_CLIENT_SECRET_ENV: ("mcp-oidc", "client-secret"),
        "PROXYRUNNER_BACKEND_AUTH": ("mcp-backend", "token"),
    }
    config, _ = parse_config(runconfig_of(docs))
    assert runconfig_of(docs)["backend_auth"] == {
        "header": "Authorization",
        "value_env": "PROXYRUNNER_BACKEND_AUTH",
    }
    # The daemon's own startup read, with each variable holding what its Secret key would.
    secrets = secrets_from_env({name: "/".join(ref) for name, ref in env.items()}, config)
    assert secrets.oidc_client_secret == "mcp-oidc/client-secret"
    assert secrets.backend_auth_value == "mcp-backend/token"


def test_secrets_as_files_are_the_mounted_secret_keys_the_runconfig_names() -> None:
    docs = render(IDENTITY_FILES, "default", *_WIRED_TODAY)
    runconfig = runconfig_of(docs)
    config, _ = parse_config(runconfig)
    oidc = runconfig["oidc_config"]
    assert mounted_source(docs, oidc["client_secret_file"]) == (
        "secret",
        "mcp-oidc",
        "client-secret",
    )
    assert mounted_source(docs, oidc["ca_cert_path"]) == ("configMap", "idp-ca", "ca.crt")
    assert set(runconfig["backend_auth"]) == {"header", "value_file"}
    assert runconfig["backend_auth"]["header"] == "X-Api-Key"
    assert mounted_source(docs, runconfig["backend_auth"]["value_file"]) == (
        "secret",
        "mcp-backend",
        "api-key",
    )
    assert secret_env(docs) == {}  # nothing of them in the environment
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    modes = {v["name"]: v["secret"]["defaultMode"] for v in pod["volumes"] if "secret" in v}
    assert modes == {"oidc-client-secret": 0o440, "backend-auth": 0o440}
    assert config.identity.oidc is not None
    assert config.identity.oidc.audience == "mcp-github"


def test_the_policies_configmap_is_mounted_where_authz_config_path_points(
    tmp_path: Path,
) -> None:
    docs = render(IDENTITY)
    path = runconfig_of(docs)["authz_config_path"]
    kind, name, key = mounted_source(docs, path)
    assert (kind, name, key) == ("configMap", "release-proxyrunner-authz", "authz.json")
    # What the daemon reads at that path is an authz config its Cedar engine builds.
    mounted = tmp_path / key
    mounted.write_text(only(docs, "ConfigMap", name)["data"][key])
    authz = load_authz_file(mounted)
    values = yaml.safe_load(IDENTITY.read_text())["authz"]
    assert list(authz.policies) == values["policies"]
    assert authz.group_claim_name == "groups"
    CedarAuthorizer.from_config(authz, "github")


def test_an_existing_policies_configmap_is_mounted_instead_of_one_the_chart_renders() -> None:
    docs = render(IDENTITY_FILES)
    path = runconfig_of(docs)["authz_config_path"]
    assert mounted_source(docs, path) == ("configMap", "mcp-policies", "authz.json")
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == [
        "release-proxyrunner-runconfig"
    ]


def test_audit_config_is_rendered_in_toolhive_shape_and_read_by_the_proxy() -> None:
    audit = runconfig_of(render(IDENTITY_FILES))["audit_config"]
    assert audit == {
        "event_types": ["mcp_tool_call", "mcp_resource_read", "mcp_prompt_get"],
        "include_request_data": True,
        "max_data_size": 4096,
        "log_file": "/tmp/audit.jsonl",
    }
    read = AUDIT_CONFIG.read(audit, "audit_config")
    assert read.records("mcp_tool_call")
    assert not read.records("mcp_ping")


def test_the_schema_knows_exactly_the_proxys_audit_event_types() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    audit = schema["properties"]["audit"]["properties"]
    assert audit["eventTypes"]["items"]["enum"] == list(EVENT_TYPES)
    assert audit["excludeEventTypes"]["items"]["enum"] == list(EVENT_TYPES)


def test_token_exchange_is_rendered_with_its_client_secret_from_a_secret() -> None:
    docs = render(TOKEN_EXCHANGE)
    exchange = runconfig_of(docs)["token_exchange_config"]
    assert exchange == {
        "token_url": "https://idp.example.com/realms/mcp/protocol/openid-connect/token",
        "client_id": "proxyrunner-exchange",
        "audience": "https://api.github.example.com",
        "scopes": ["repo"],
    }
    read_token_exchange(exchange, "token_exchange_config")  # a shape the proxy reads
    assert secret_env(docs) == {TOKEN_EXCHANGE_CLIENT_SECRET_ENV: ("mcp-exchange", "client-secret")}
    assert "backend_auth" not in runconfig_of(docs)


def test_a_change_of_policies_or_secret_references_rolls_the_pods() -> None:
    def annotations(*sets: str) -> dict[str, str]:
        deployment = only(render(IDENTITY, "default", *sets), "Deployment")
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    base = annotations()
    assert annotations() == base
    for change in (
        "authz.policies[0]=forbid(principal\\, action\\, resource);",
        "backendAuth.secret.name=other-backend",
        "oidc.clientSecret.key=other-key",
    ):
        changed = annotations(change)
        assert changed["checksum/identity"] != base["checksum/identity"], change
    # An existing policies ConfigMap: its name and key are what the chart can see.
    existing = ("authz.policies=null", "authz.existingConfigMap=mine")
    assert (
        annotations(*existing)["checksum/identity"]
        != annotations(*existing, "authz.existingConfigMap=theirs")["checksum/identity"]
    )


@pytest.mark.parametrize(
    ("settings", "where", "rule"),
    [
        (("oidc.enabled=true", "oidc.issuer=https://idp"), "at '/oidc/resourceUrl'", "minLength"),
        (("oidc.issuer=idp.example.com",), "at '/oidc/issuer'", "does not match pattern"),
        (("oidc.clientSecretValue=x",), "at '/oidc'", "'clientSecretValue' not allowed"),
        (("backendAuth.enabled=true",), "at '/backendAuth/secret/name'", "minLength"),
        (("backendAuth.header=Bad Header",), "at '/backendAuth/header'", "does not match"),
        (("audit.eventTypes={mcp_bogus}",), "at '/audit/eventTypes/0'", "must be one of"),
        (("audit.maxDataSize=-1",), "at '/audit/maxDataSize'", "minimum"),
        (
            ("tokenExchange.enabled=true",),
            "at '/tokenExchange/clientSecret/existingSecret'",
            "minLength",
        ),
        (("authz.policies={}", "authz.key=a/b"), "at '/authz/key'", "does not match pattern"),
    ],
)
def test_schema_rejects_bad_identity_values_naming_where_and_why(
    settings: tuple[str, ...], where: str, rule: str
) -> None:
    args = [a for s in settings for a in ("--set", s)]
    result = helm("template", "r", str(CHART), *args)
    assert result.returncode != 0
    assert SCHEMA_REFUSAL in result.stderr
    assert where in result.stderr, result.stderr
    assert rule in result.stderr, result.stderr


_OIDC_ON = ("oidc.enabled=true", "oidc.issuer=https://idp", "oidc.resourceUrl=https://mcp/mcp")
_EXCHANGE_ON = (
    "tokenExchange.enabled=true",
    "tokenExchange.tokenUrl=https://idp/token",
    "tokenExchange.clientId=c",
    "tokenExchange.audience=a",
    "tokenExchange.clientSecret.existingSecret=s",
)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (_EXCHANGE_ON, "tokenExchange.enabled needs oidc.enabled"),
        (
            (*_OIDC_ON, *_EXCHANGE_ON, "backendAuth.enabled=true", "backendAuth.secret.name=b"),
            "tokenExchange.enabled and backendAuth.enabled conflict",
        ),
        (("authz.enabled=true",), "authz.enabled needs authz.policies or authz.existingConfigMap"),
        (
            (
                "authz.enabled=true",
                "authz.policies={permit(principal\\, action\\, resource);}",
                "authz.existingConfigMap=p",
            ),
            "authz.policies and authz.existingConfigMap are both set",
        ),
        (
            (*_OIDC_ON, "runConfig.oidc_config.issuer=https://other"),
            "runConfig.oidc_config is set while oidc.enabled renders it",
        ),
        (
            ("authz.enabled=true", "authz.existingConfigMap=p", "runConfig.authz_config.version=1"),
            "runConfig.authz_config is set while authz.enabled renders authz_config_path",
        ),
    ],
)
def test_identity_values_that_contradict_each_other_fail_rendering(
    settings: tuple[str, ...], message: str
) -> None:
    args = [a for s in settings for a in ("--set", s)]
    result = helm("template", "r", str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("field", ["oidc_config", "token_exchange_config"])
def test_a_client_secret_in_the_runconfig_is_refused_without_echoing_it(
    field: str, tmp_path: Path
) -> None:
    values = tmp_path / "v.yaml"
    values.write_text(f"runConfig:\n  name: x\n  {field}:\n    client_secret: hunter2\n")
    refusal = schema_refusal("-f", str(values))
    assert f"at '/runConfig/{field}'" in refusal, refusal
    assert "hunter2" not in refusal


def test_the_readme_identity_example_is_the_values_file_the_tests_check() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Identity, end to end") :]
    example = section[
        section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)
    ]
    assert yaml.safe_load(example) == yaml.safe_load(IDENTITY.read_text())
    commands = section[: section.index("```yaml\n")]
    created = set(re.findall(r"create secret generic (\S+) --from-literal=([^=]+)=", commands))
    assert created == set(secret_env(render(IDENTITY)).values())
    assert (
        "helm install mcp charts/proxyrunner -n mcp -f charts/proxyrunner/ci/identity-values.yaml"
        in commands
    )


def test_network_policy_admits_only_the_proxy_pods_on_the_backend_port() -> None:
    assert not by_kind(render(CHART / "ci" / "default-values.yaml"), "NetworkPolicy")
    docs = render(CHART / "ci" / "networkpolicy-values.yaml")
    (policy,) = by_kind(docs, "NetworkPolicy")
    (deployment,) = by_kind(docs, "Deployment")
    proxy_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "guarded"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source.keys() == {"podSelector"}  # no namespaceSelector: this namespace only
    selector = source["podSelector"]["matchLabels"]
    assert selector.items() <= proxy_labels.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    # The backend pods carry app=<name> (the StatefulSet's template), the proxy pods do not.
    assert "app" not in proxy_labels
    stdio = render(CHART / "ci" / "stdio-values.yaml", "default", "networkPolicy.enabled=true")
    (closed,) = by_kind(stdio, "NetworkPolicy")
    assert closed["spec"]["ingress"] == []  # attach goes through the API server, not the pod

"""The Kubernetes test tier: a real kube-apiserver backed by a real etcd, on loopback.

- ``kube_cluster`` (session): starts etcd and kube-apiserver (binaries built by
  ``scripts/kube-test-env``; ``$KUBE_APISERVER``/``$ETCD`` override) and returns a
  ``tests.kube.helpers.KubeCluster``. Skips the test when the binaries are not built, unless
  ``PROXYRUNNER_REQUIRE_KUBE=1``, which turns that into a failure.
- ``kube_namespace`` (function): a fresh namespace in which config/rbac/role.yaml is
  applied and bound to user ``proxyrunner``; deleted afterwards.
- ``kube_controller_manager`` (session): a real kube-controller-manager against the same
  apiserver, running only the deployment, replicaset, garbagecollector and
  horizontalpodautoscaling controllers (Deployments get ReplicaSets, owner references are
  collected, HPAs scale their targets; no metrics API, so only by min/max). Not the
  statefulset controller: it runs for the rest of the session, and backend pods are the
  tests' to create, as a kubelet-less cluster needs. Only the tests that ask
  for it start it; skipped like the cluster when it is not built.

There is no kubelet, and without ``kube_controller_manager`` no controllers: tests create
Pods, EndpointSlices etc. and patch statuses themselves. The processes log to files in
the session's tmp dir (``cluster.workdir``); the startup error carries the tail of the log.

Process startup is synchronous on purpose (no session-scoped event loop needed); the
first test to use the cluster gets extra time for it (see ``pytest_runtest_protocol``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
import yaml

from tests.kube.helpers import REPO_ROOT, KubeCluster, KubeRequestError
from tests.procs import Proc, free_port, http_status

STARTUP_DEADLINE = 90.0  # seconds for etcd + kube-apiserver to become ready
STOP_TIMEOUT = 15.0  # SIGTERM, then SIGKILL after this long
SERVICE_CIDR = "10.96.0.0/16"  # only allocated from, never routed

_cluster_started = False


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Give the first test that uses ``kube_cluster`` time for the cluster's startup.

    pytest-timeout's per-test limit covers fixture setup; this runs before its hook
    reads the ``timeout`` marker.
    """
    if not _cluster_started and "kube_cluster" in getattr(item, "fixturenames", ()):
        marker = item.get_closest_marker("timeout")
        current = float(marker.args[0]) if marker and marker.args else 0.0
        configured = float(item.config.getini("timeout") or 0)
        base = max(current, configured)
        if base > 0:
            item.add_marker(pytest.mark.timeout(base + STARTUP_DEADLINE + 30), append=False)
    yield


def _find_binaries() -> dict[str, str]:
    """KUBE_APISERVER/ETCD/HELM from the environment, else from the script's cache."""
    names = ("KUBE_APISERVER", "KUBE_CONTROLLER_MANAGER", "ETCD", "HELM")
    found = {name: os.environ[name] for name in names if os.environ.get(name)}
    if "KUBE_APISERVER" not in found or "ETCD" not in found:
        try:
            out = subprocess.run(
                [str(REPO_ROOT / "scripts" / "kube-test-env"), "--print-env"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        for line in out.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key in names:
                found.setdefault(key, value)
    return {k: v for k, v in found.items() if os.path.isfile(v) and os.access(v, os.X_OK)}


# --- certificates and keys --------------------------------------------------------------


def _make_pki(directory: Path) -> None:
    """ca.crt/ca.key, apiserver.crt/.key (127.0.0.1, localhost) and sa.key/sa.pub."""
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        _make_pki_openssl(directory)
    else:
        _make_pki_cryptography(directory)


def _make_pki_cryptography(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def usage(**allowed: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        return x509.KeyUsage(**{**flags, **allowed})

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxyrunner-test-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_key(directory / "ca.key", ca_key)
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_key(directory / "apiserver.key", key)
    (directory / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    sa_key = ec.generate_private_key(ec.SECP256R1())
    write_key(directory / "sa.key", sa_key)
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _make_pki_openssl(directory: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    (directory / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = proxyrunner-test-ca\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,digitalSignature,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    (directory / "apiserver.ext").write_text(
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier = keyid\n"
    )
    for name in ("ca", "apiserver", "sa"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
    openssl(
        "req", "-x509", "-new", "-config", "ca.cnf", "-extensions", "v3_ca",
        "-key", "ca.key", "-sha256", "-days", "2", "-out", "ca.crt",
    )  # fmt: skip
    openssl(
        "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
        "-out", "apiserver.csr",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-sha256",
        "-extfile", "apiserver.ext", "-out", "apiserver.crt",
    )  # fmt: skip
    openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub")


# --- processes --------------------------------------------------------------------------


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _wait_for(ready: Callable[[], bool], proc: Proc, what: str, deadline: float, log: Path) -> None:
    while True:
        if not proc.alive():
            raise RuntimeError(
                f"{what} exited with {proc.popen.poll()} during startup; "
                f"last lines of {log}:\n{_tail(log)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} not ready after {STARTUP_DEADLINE:.0f}s; last lines of {log}:\n"
                f"{_tail(log)}"
            )
        time.sleep(0.2)


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    global _cluster_started
    binaries = _find_binaries()
    if "KUBE_APISERVER" not in binaries or "ETCD" not in binaries:
        message = "kube-apiserver not built: run scripts/kube-test-env"
        if os.environ.get("PROXYRUNNER_REQUIRE_KUBE") == "1":
            pytest.fail(message + " (PROXYRUNNER_REQUIRE_KUBE=1)")
        pytest.skip(message)
    _cluster_started = True

    work = tmp_path_factory.mktemp("kube")
    pki = work / "pki"
    pki.mkdir()
    _make_pki(pki)
    admin_token, proxy_token = secrets.token_hex(24), secrets.token_hex(24)
    tokens = work / "tokens.csv"
    tokens.write_text(
        f'{admin_token},admin,admin-uid,"system:masters"\n'
        f"{proxy_token},proxyrunner,proxyrunner-uid\n"
    )
    tokens.chmod(0o600)

    etcd_port, peer_port, api_port = _distinct_free_ports(3)
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    server = f"https://127.0.0.1:{api_port}"
    deadline = time.monotonic() + STARTUP_DEADLINE
    started: list[Proc] = []
    try:
        etcd_log = work / "etcd.log"
        etcd = Proc(
            [
                binaries["ETCD"],
                "--name=test",
                f"--data-dir={work / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            etcd_log,
            {},
        )
        started.append(etcd)
        _wait_for(
            lambda: http_status(f"{etcd_url}/health") == 200, etcd, "etcd", deadline, etcd_log
        )

        api_log = work / "kube-apiserver.log"
        apiserver = Proc(
            [
                binaries["KUBE_APISERVER"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoint reconciler refuses a loopback advertise address; nothing
                # here needs the default/kubernetes Service's endpoints.
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ],
            api_log,
            {},
        )
        started.append(apiserver)
        admin_kubeconfig = _kubeconfig(
            work / "admin.kubeconfig", server, pki / "ca.crt", "admin", admin_token
        )
        proxy_kubeconfig = _kubeconfig(
            work / "proxy.kubeconfig", server, pki / "ca.crt", "proxyrunner", proxy_token
        )
        cluster = KubeCluster(
            server=server,
            admin_kubeconfig=admin_kubeconfig,
            proxy_kubeconfig=proxy_kubeconfig,
            admin_token=admin_token,
            proxy_token=proxy_token,
            ca_file=pki / "ca.crt",
            etcd_url=etcd_url,
            workdir=work,
            helm=Path(binaries["HELM"]) if "HELM" in binaries else None,
            controller_manager=(
                Path(binaries["KUBE_CONTROLLER_MANAGER"])
                if "KUBE_CONTROLLER_MANAGER" in binaries
                else None
            ),
        )

        def apiserver_ready() -> bool:
            try:
                cluster.request_raw("GET", "/readyz", timeout=2.0)
            except (KubeRequestError, OSError):
                return False
            return True

        _wait_for(apiserver_ready, apiserver, "kube-apiserver", deadline, api_log)
        yield cluster
    finally:
        for proc in reversed(started):
            proc.stop(timeout=STOP_TIMEOUT)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace where user ``proxyrunner`` has config/rbac/role.yaml; deleted after."""
    name = kube_cluster.create_namespace(request.node.name)
    try:
        kube_cluster.bind_proxy_role(name)
        yield name
    finally:
        kube_cluster.delete_namespace(name)


# The controllers the operator tests need; nothing that signs certificates or tokens.
CONTROLLERS = "deployment,replicaset,garbagecollector,horizontalpodautoscaling"


@pytest.fixture(scope="session")
def kube_controller_manager(kube_cluster: KubeCluster) -> Iterator[Path]:
    """A kube-controller-manager on the test cluster; returns its log file."""
    binary = kube_cluster.controller_manager
    if binary is None:
        message = "kube-controller-manager not built: run scripts/kube-test-env"
        if os.environ.get("PROXYRUNNER_REQUIRE_KUBE") == "1":
            pytest.fail(message + " (PROXYRUNNER_REQUIRE_KUBE=1)")
        pytest.skip(message)
    port = free_port()
    log = kube_cluster.workdir / "kube-controller-manager.log"
    proc = Proc(
        [
            str(binary),
            f"--kubeconfig={kube_cluster.admin_kubeconfig}",
            f"--authentication-kubeconfig={kube_cluster.admin_kubeconfig}",
            f"--authorization-kubeconfig={kube_cluster.admin_kubeconfig}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={kube_cluster.workdir / 'kcm-certs'}",
            "--concurrent-deployment-syncs=2",
            "--concurrent-gc-syncs=2",
            # An HPA test waits for the controller's first rescale, not the 15 s default.
            "--horizontal-pod-autoscaler-sync-period=1s",
            "--v=1",
        ],
        log,
        {},
    )
    # /healthz is on the always-allowed paths; the serving certificate is self-signed.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=2.0, context=insecure
            ) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    try:
        _wait_for(
            healthy,
            proc,
            "kube-controller-manager",
            time.monotonic() + STARTUP_DEADLINE,
            log,
        )
        yield log
    finally:
        proc.stop(timeout=STOP_TIMEOUT)

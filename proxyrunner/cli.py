"""Command line: ``proxyrunner run``, ``proxyrunner operator``, ``proxyrunner config
validate``, ``--version``.

Exit codes (documented in the README):
  0  clean exit, including after a graceful drain (operator: after releasing its Lease)
  1  anything unexpected (with a logged traceback), or a forced stop by a second signal
  2  configuration error: the message names the field, the rule and the value
  3  startup failure: port taken, backend never ready, Redis refused our credentials;
     operator: no API access, or the MCPServer CRD is not installed
  4  operator only: the leader Lease could not be renewed in time (restart to rejoin)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from proxyrunner import __version__
from proxyrunner.audit.events import replica_name
from proxyrunner.config import (
    BackendConfig,
    ListenConfig,
    LoadedConfig,
    RunConfig,
    Secrets,
    apply_env_overrides,
    dump_json,
    find_config_file,
    load_config_file,
    pod_address_map,
    pod_namespace,
    secrets_from_env,
)
from proxyrunner.durations import parse_duration
from proxyrunner.errors import ConfigError, StartupError
from proxyrunner.logging import configure_logging, get_logger

if TYPE_CHECKING:
    from proxyrunner.kube.client import KubeAccess

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_STARTUP: Final = 3


def embedded_config() -> RunConfig:
    """The embedded default: two local demo MCP servers behind the proxy on 127.0.0.1:8080,
    sessions in memory, no drain delay (loopback: no load balancer to wait for).
    ``config/embedded.json`` is the same config as a file."""
    return RunConfig(
        name="demo",
        backend=BackendConfig(cmd_args=(sys.executable, "-m", "proxyrunner.demo"), replicas=2),
        listen=ListenConfig(host="127.0.0.1", port=8080),
    )


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxyrunner",
        description="An MCP proxy for running Model Context Protocol servers at scale.",
    )
    parser.add_argument("--version", action="version", version=f"proxyrunner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve MCP traffic")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="RunConfig file (JSON or YAML)")
    source.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        help="read the RunConfig from this ConfigMap (key runconfig.json) through the API",
    )
    source.add_argument(
        "--embedded",
        action="store_true",
        help="run the embedded default: two local demo MCP servers, in-memory sessions",
    )
    run.add_argument("--host", help="listen address (overrides the RunConfig)")
    run.add_argument("--port", type=int, help="listen port (overrides the RunConfig)")
    run.add_argument("--drain-delay", type=_duration_arg, help="e.g. 5s (overrides RunConfig)")
    run.add_argument("--drain-timeout", type=_duration_arg, help="e.g. 25s (overrides RunConfig)")
    run.add_argument("--log-format", choices=("json", "console", "auto"), default="auto")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    operator = commands.add_parser(
        "operator", help="reconcile MCPServer resources (toolhive.stacklok.dev/v1alpha1)"
    )
    operator.add_argument(
        "--proxy-image",
        default=os.environ.get("PROXYRUNNER_PROXY_IMAGE"),
        help="image of the proxy Deployments (default: $PROXYRUNNER_PROXY_IMAGE)",
    )
    operator.add_argument("--proxy-image-pull-policy", default="IfNotPresent")
    operator.add_argument("--namespace", help="watch this namespace only (default: all)")
    operator.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster)")
    operator.add_argument("--lease-name", default="proxyrunner-operator")
    operator.add_argument(
        "--lease-namespace", help="namespace of the leader Lease (default: the pod's own)"
    )
    operator.add_argument("--identity", help="leader election identity (default: pod name)")
    operator.add_argument("--workers", type=int, default=2)
    operator.add_argument("--resync", type=_duration_arg, default=300.0)
    operator.add_argument("--lease-duration", type=_duration_arg, default=15.0)
    operator.add_argument("--renew-deadline", type=_duration_arg, default=10.0)
    operator.add_argument("--retry-period", type=_duration_arg, default=2.0)
    operator.add_argument("--log-format", choices=("json", "console", "auto"), default="auto")
    operator.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )

    config = commands.add_parser("config", help="work with RunConfig files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser(
        "validate", help="check a RunConfig and print it normalized"
    )
    validate.add_argument("path", type=Path)
    return parser


def _apply_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    listen, drain = config.listen, config.drain
    if args.host is not None:
        listen = replace(listen, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: must be between 0 and 65535, got {args.port}")
        listen = replace(listen, port=args.port)
    if args.drain_delay is not None:
        drain = replace(drain, configured_delay=args.drain_delay)
    if args.drain_timeout is not None:
        if args.drain_timeout <= 0:
            raise ConfigError("--drain-timeout: must be greater than zero")
        drain = replace(drain, timeout=args.drain_timeout)
    if listen is config.listen and drain is config.drain:
        return config
    # RunConfig derives the default drain delay again: it depends on the listen address.
    return replace(config, listen=listen, drain=drain)


async def _load_from_configmap(reference: str) -> tuple[LoadedConfig, Any]:
    from proxyrunner.kube.client import open_api_client
    from proxyrunner.kube.configmap import load_runconfig_from_configmap

    namespace, sep, name = reference.rpartition("/")
    if not sep:
        namespace, name = pod_namespace(os.environ), reference
    if not name:
        raise ConfigError(f"--configmap: expected NAMESPACE/NAME, got {reference!r}")
    api = await open_api_client()
    try:
        return await load_runconfig_from_configmap(
            api, namespace or pod_namespace(os.environ), name
        ), api
    except BaseException:
        await api.close()
        raise


async def _read_environment(
    config: RunConfig, kube_api: Any
) -> tuple[RunConfig, Secrets, KubeAccess | None]:
    """Everything the process takes from outside the RunConfig, read once, here: the
    generation override, the Redis password, and for the kubernetes runtime its
    namespace (the RunConfig's, else the pod's), the pod address map and the API client
    (opened unless the ConfigMap read opened one already)."""
    config = apply_env_overrides(config, os.environ)
    secrets = secrets_from_env(os.environ, config)
    if config.backend.runtime != "kubernetes":
        return config, secrets, None
    from proxyrunner.kube.client import KubeAccess, open_api_client

    namespace = config.kubernetes.namespace or pod_namespace(os.environ)
    address_map = pod_address_map(os.environ)
    api = kube_api or await open_api_client()
    return config, secrets, KubeAccess(api, namespace, address_map)


async def _run(args: argparse.Namespace) -> int:
    from proxyrunner.app import ProxyProcess

    log = get_logger()
    kube_api: Any = None
    kube: KubeAccess | None = None
    if args.embedded:
        loaded = LoadedConfig(embedded_config(), "embedded default", ())
    elif args.configmap:
        loaded, kube_api = await _load_from_configmap(args.configmap)
    else:
        loaded = load_config_file(args.config or find_config_file())
    try:
        if loaded.unknown_fields:
            log.debug("ignoring unknown RunConfig fields", fields=list(loaded.unknown_fields))
        config, secrets, kube = await _read_environment(_apply_flags(loaded.config, args), kube_api)
        log.info("config loaded", source=loaded.source)
        replica = replica_name(os.environ, config.name)
        return await ProxyProcess(config, secrets, kube, replica).run()
    finally:
        api = kube.api if kube is not None else kube_api
        if api is not None:
            await api.close()


async def _operate(args: argparse.Namespace) -> int:
    from proxyrunner.kube.client import open_api_client
    from proxyrunner.operator.controller import ControllerSettings
    from proxyrunner.operator.leader import LeaseSettings
    from proxyrunner.operator.reconcile import ProxySettings
    from proxyrunner.operator.runner import OperatorSettings, run_operator

    if not args.proxy_image:
        raise ConfigError("--proxy-image: required (or set PROXYRUNNER_PROXY_IMAGE)")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    identity = (
        args.identity
        or os.environ.get("POD_NAME")
        or (f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    )
    try:
        lease = LeaseSettings(
            namespace=args.lease_namespace or pod_namespace(os.environ),
            name=args.lease_name,
            identity=identity,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    settings = OperatorSettings(
        proxy=ProxySettings(image=args.proxy_image, pull_policy=args.proxy_image_pull_policy),
        lease=lease,
        controller=ControllerSettings(
            namespace=args.namespace, workers=args.workers, resync=args.resync
        ),
    )
    api = await open_api_client(args.kubeconfig)
    try:
        return await run_operator(api, settings, get_logger())
    finally:
        await api.close()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run

    def run(coro: Coroutine[Any, Any, int]) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)

    return run


def _validate(path: Path) -> int:
    from proxyrunner.proxy.policy import load_policies

    loaded = load_config_file(path)
    load_policies(loaded.config)  # the files it names and every Cedar policy parse too
    sys.stdout.write(dump_json(loaded.config))
    if loaded.unknown_fields:
        sys.stderr.write(f"note: ignored unknown fields: {', '.join(loaded.unknown_fields)}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            return _validate(args.path)
        configure_logging(args.log_format, args.log_level)
        if args.command == "operator":
            return _event_loop_runner()(_operate(args))
        return _event_loop_runner()(_run(args))
    except ConfigError as exc:
        sys.stderr.write(f"proxyrunner: {exc}\n")
        return EXIT_CONFIG
    except StartupError as exc:
        get_logger().error("startup failed", error=str(exc))
        sys.stderr.write(f"proxyrunner: startup failed: {exc}\n")
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return EXIT_UNEXPECTED
    except Exception:
        get_logger().exception("unexpected error")
        return EXIT_UNEXPECTED

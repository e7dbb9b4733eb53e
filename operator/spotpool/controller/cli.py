"""`spotpool operator`: run the operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re

import kopf

from spotpool.controller.config import OperatorConfig
from spotpool.controller.identity import CredentialPolicyError
from spotpool.controller.leadership import Timing
from spotpool.controller.policy import DEFAULT_ALLOWED_ENDPOINTS, Policy, PolicyError, parse_price
from spotpool.controller.redaction import REDACTOR
from spotpool.planner.model import UNANSWERED_SETTLED

DEFAULTS = OperatorConfig()
"""Every flag's default is the configuration's own: defined once, in `OperatorConfig`."""

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a namespace name


MAX_RENEW_DEADLINE = UNANSWERED_SETTLED.total_seconds() / 2
"""The longest renew deadline: half the age at which an unanswered purchase is settled, leaving the
other half for the call's own transit and the clocks' rates."""


def parse(argv: list[str] | None) -> OperatorConfig:
    parser = argparse.ArgumentParser(prog="spotpool operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], dest="namespaces",
                       help="watch this namespace (repeatable; globs allowed); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    serving = parser.add_argument_group(
        "metrics and health", "two ports: /metrics for Prometheus, /healthz and /readyz for the kubelet")
    serving.add_argument("--metrics-host", default=DEFAULTS.metrics_host,
                         help="address of the metrics port (default 0.0.0.0: every interface, for Prometheus)")
    serving.add_argument("--metrics-port", type=int, default=DEFAULTS.metrics_port,
                         help="port serving /metrics (default 8443; 0 picks a free one)")
    serving.add_argument("--metrics-secure", action=argparse.BooleanOptionalAction, default=DEFAULTS.metrics_secure,
                         help="serve /metrics over HTTPS, only to bearer tokens the API server says may get the "
                              "non-resource URL /metrics (TokenReview + SubjectAccessReview; the operator needs "
                              "create on both); default: on. --no-metrics-secure: plain HTTP to anyone, for "
                              "DEVELOPMENT only (the demo, on loopback)")
    serving.add_argument("--metrics-cert-file", default=None, metavar="PATH",
                         help="PEM certificate (chain) of the metrics port, reloaded when it changes, e.g. "
                              "tls.crt of a cert-manager Secret; default: a self-signed one made at start-up")
    serving.add_argument("--metrics-key-file", default=None, metavar="PATH",
                         help="PEM private key of --metrics-cert-file (e.g. tls.key)")
    serving.add_argument("--health-host", default=DEFAULTS.health_host,
                         help="address of the health port (default 0.0.0.0: the kubelet probes the Pod's IP)")
    serving.add_argument("--health-port", type=int, default=DEFAULTS.health_port,
                         help="port serving /healthz and /readyz over plain HTTP, without authentication "
                              "(default 8081; 0 picks a free one)")
    parser.add_argument("--observe-interval", type=float, default=DEFAULTS.observe_interval,
                        help="seconds between sweeps of each account and region's instances; a pool whose "
                             "instances changed is reconciled right after (default 15)")
    parser.add_argument("--heartbeat-interval", type=float, default=DEFAULTS.heartbeat_interval,
                        help="seconds between passes of a settled pool that nothing woke (default 300)")
    parser.add_argument("--progress-interval", type=float, default=DEFAULTS.progress_interval,
                        help="seconds between observations while buying or releasing (default 2)")
    parser.add_argument("--first-passes-at-once", type=int, default=DEFAULTS.first_passes_at_once,
                        help="pools whose first pass after the operator starts (or after they are created) "
                             "runs at once; the others queue (default 50). Bounds the memory a restart on "
                             "many pools takes: CPython keeps its peak")
    parser.add_argument("--market-max-age", type=float, default=DEFAULTS.offers_max_age,
                        help="seconds a read of prices, stock and quota is reused by the pools of an account "
                             "(default 30); a sold-out pool coming back is noticed within it")
    parser.add_argument("--cluster-id", default=os.environ.get("SPOTPOOL_CLUSTER_ID"),
                        help="tag value that tells this installation's instances from others' on the same "
                             "account (default: $SPOTPOOL_CLUSTER_ID, else the kube-system namespace UID)")
    parser.add_argument("--cvm-rate-limit", action="append", default=[], metavar="ACTION=PER_SECOND",
                        help="client-side CVM rate limit for an action (repeatable), e.g. RunInstances=5; "
                             "default: the documented limits (RunInstances 10/s, DescribeInstances 40/s, ...)")
    policy = parser.add_argument_group(
        "administrator policy", "what pool authors may not choose (docs/security.md); unset guards are unlimited")
    policy.add_argument("--allowed-endpoint", action="append", default=[], dest="allowed_endpoints",
                        metavar="URL",
                        help="a CVM endpoint pools may name in spec.endpoint (repeatable; https; '{region}' "
                             "stands for the pool's region); replaces the default: "
                             + ", ".join(DEFAULT_ALLOWED_ENDPOINTS))
    policy.add_argument("--allow-loopback-endpoints", action="store_true",
                        help="DEVELOPMENT ONLY: also allow endpoints on loopback hosts (127.0.0.0/8, ::1, "
                             "localhost), http included: the simulator of the demo and the tests")
    policy.add_argument("--allow-insecure-endpoints", action="store_true",
                        help="DEVELOPMENT ONLY: accept plain http for endpoints listed with --allowed-endpoint "
                             "(the simulator on a test cluster's network); credentials then cross it unencrypted")
    policy.add_argument("--max-expected-count", type=int, default=None, metavar="N",
                        help="a pool whose spec.expectedCount is above N buys nothing")
    policy.add_argument("--max-namespace-instances", type=int, default=None, metavar="N",
                        help="a pool buys nothing while its namespace's pools would expect more than N instances")
    policy.add_argument("--max-total-instances", type=int, default=None, metavar="N",
                        help="a pool buys nothing while all pools would expect more than N instances")
    policy.add_argument("--max-price", default=None, metavar="USD_PER_HOUR",
                        help="a pool whose spec.maxPrice is above this buys nothing")
    policy.add_argument("--allowed-instance-type", action="append", default=[], dest="allowed_instance_types",
                        metavar="GLOB",
                        help="instance types pools may buy (repeatable; fnmatch globs, case-insensitive, "
                             "e.g. 'S5.*'); default: any; a pool naming another type buys nothing")
    policy.add_argument("--on-demand-namespace", action="append", default=[], dest="on_demand_namespaces",
                        metavar="GLOB",
                        help="namespaces whose pools may buy on-demand (pay-as-you-go) instances (repeatable; "
                             "fnmatch globs, e.g. 'platform-*'); default: every namespace")
    creds = parser.add_argument_group(
        "credentials", "where pools' CVM credentials come from (spec.credentials), and who may use which")
    creds.add_argument("--operator-identity", choices=("none", "pod-identity", "cvm-role"),
                       default=DEFAULTS.operator_identity,
                       help="the operator's own identity: TKE pod identity (the TKE_* variables the pod-identity "
                            "webhook injects, or the chart sets), or the CAM role of the CVM it runs on; pools "
                            "with credentials.source OperatorIdentity or Role use it (default: none)")
    creds.add_argument("--cvm-role", default=None, metavar="NAME",
                       help="with --operator-identity cvm-role: the role's name (default: the one bound to the CVM)")
    creds.add_argument("--sts-endpoint", default=None, metavar="URL",
                       help="STS for pod identity and assumed roles (default: https://sts.tencentcloudapi.com)")
    creds.add_argument("--metadata-endpoint", default=None, metavar="URL",
                       help="the CVM metadata service (default: http://metadata.tencentyun.com)")
    creds.add_argument("--secret-credentials", action=argparse.BooleanOptionalAction,
                       default=DEFAULTS.secret_credentials,
                       help="allow key pairs from Secrets (spec.credentialsSecretRef; default: on)")
    creds.add_argument("--allow-operator-identity", action="append", default=[], metavar="NAMESPACE_GLOB",
                       dest="operator_identity_namespaces",
                       help="namespaces whose pools may act as the operator itself (repeatable; default: none)")
    creds.add_argument("--allow-role", action="append", default=[], metavar="NAMESPACE_GLOB=ROLE_ARN_GLOB",
                       dest="allowed_roles",
                       help="roles pools of these namespaces may assume from the operator's identity "
                            "(repeatable; e.g. 'team-a=qcs::cam::uin/*:roleName/spotpool-team-a'; default: none)")
    orphans = parser.add_argument_group(
        "orphan collector", "instances of this installation whose SpotComputeEnvironment no longer exists")
    orphans.add_argument("--orphan-release", action=argparse.BooleanOptionalAction, default=DEFAULTS.orphan_release,
                         help="release orphan instances after --orphan-grace (default: on); off: only report "
                              "them (a Warning Event, the spotpool_orphan_instances metric, the log)")
    orphans.add_argument("--orphan-grace", type=float, default=DEFAULTS.orphan_grace, metavar="SECONDS",
                         help="how long an instance stays an orphan before it is released, and at least two "
                              f"sweeps (default {DEFAULTS.orphan_grace:.0f})")
    election = parser.add_argument_group(
        "leader election", "several replicas (or installations) elect one leader on a Lease; only it acts")
    election.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=DEFAULTS.leader_elect,
                          help="act only while holding the Lease named from the cluster id and, with "
                               "--namespace, the watched namespaces (default: off)")
    election.add_argument("--leader-election-namespace", default=DEFAULTS.leader_election_namespace,
                          metavar="NAMESPACE",
                          help="namespace of the Lease, shared by every installation in the cluster whatever "
                               f"namespace it runs in (default: {DEFAULTS.leader_election_namespace}); installations "
                               "that must not act at once need the same value")
    election.add_argument("--lease-duration", type=int, default=DEFAULTS.lease_duration,
                          help="whole seconds a follower waits, from its last sight of a renewal, before "
                               "taking over (default 15)")
    election.add_argument("--renew-deadline", type=float, default=DEFAULTS.renew_deadline,
                          help="seconds after its last successful renewal a leader stops acting; less than "
                               "the lease duration (default 10)")
    election.add_argument("--retry-period", type=float, default=DEFAULTS.retry_period,
                          help="seconds between attempts to acquire or renew (default 2)")
    parser.add_argument("--log-level", default=os.environ.get("SPOTPOOL_LOG_LEVEL", DEFAULTS.log_level),
                        choices=LOG_LEVELS)
    parser.add_argument("--log-format", default=os.environ.get("SPOTPOOL_LOG_FORMAT", DEFAULTS.log_format),
                        choices=LOG_FORMATS)
    args = parser.parse_args(argv)
    # argparse checks `choices` only for values given on the command line, not for env defaults.
    for flag, value, allowed in (("--log-level / SPOTPOOL_LOG_LEVEL", args.log_level, LOG_LEVELS),
                                 ("--log-format / SPOTPOOL_LOG_FORMAT", args.log_format, LOG_FORMATS)):
        if value not in allowed:
            parser.error(f"{flag}: {value!r} is not one of {', '.join(allowed)}")
    try:
        Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    except (TypeError, ValueError) as exc:
        parser.error(f"leader election: {exc}")
    if args.renew_deadline > MAX_RENEW_DEADLINE:
        # A past leader's last spending call is bounded by its renew deadline; an unanswered purchase
        # is settled from a listing once that call must have landed (planner.model.UNANSWERED_SETTLED).
        parser.error(f"--renew-deadline: at most {MAX_RENEW_DEADLINE:.0f} s, so that a past leader's last "
                     f"RunInstances has landed before an unanswered purchase is settled "
                     f"({UNANSWERED_SETTLED.total_seconds():.0f} s after it was recorded)")
    if not DNS_LABEL.fullmatch(args.leader_election_namespace):
        parser.error(f"--leader-election-namespace {args.leader_election_namespace!r}: not a namespace name")
    rate_limits: dict[str, float] = {}
    for item in args.cvm_rate_limit:
        action, _, rate = item.partition("=")
        try:
            rate_limits[action.strip()] = float(rate)
        except ValueError:
            parser.error(f"--cvm-rate-limit {item!r}: expected ACTION=PER_SECOND, e.g. RunInstances=5")
        if not action.strip() or rate_limits[action.strip()] <= 0:
            parser.error(f"--cvm-rate-limit {item!r}: the action must be named and the rate positive")
    if (args.metrics_cert_file is None) != (args.metrics_key_file is None):
        parser.error("--metrics-cert-file and --metrics-key-file go together")
    if args.metrics_cert_file is not None and not args.metrics_secure:
        parser.error("--metrics-cert-file: the metrics port serves plain HTTP (--no-metrics-secure)")
    for flag, port in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        if not 0 <= port <= 65535:
            parser.error(f"{flag}: {port} is not a TCP port (0 picks a free one)")
    if args.metrics_port == args.health_port != 0:
        parser.error(f"--metrics-port and --health-port: {args.health_port} for both; the health port is "
                     "plain HTTP for the kubelet, the metrics port needs its own")
    if args.orphan_grace < 0:
        parser.error("--orphan-grace: must be seconds >= 0")
    if args.first_passes_at_once < 1:
        parser.error("--first-passes-at-once: must be at least 1")
    try:
        max_price = parse_price(args.max_price) if args.max_price is not None else None
    except PolicyError as exc:
        parser.error(str(exc))
    config = OperatorConfig(
        namespaces=tuple(args.namespaces),
        rate_limits=rate_limits,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        metrics_secure=args.metrics_secure,
        metrics_cert_file=args.metrics_cert_file,
        metrics_key_file=args.metrics_key_file,
        health_host=args.health_host,
        health_port=args.health_port,
        observe_interval=args.observe_interval,
        offers_max_age=args.market_max_age,
        heartbeat_interval=args.heartbeat_interval,
        progress_interval=args.progress_interval,
        first_passes_at_once=args.first_passes_at_once,
        cluster_id=args.cluster_id,
        log_level=args.log_level,
        log_format=args.log_format,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        allowed_endpoints=tuple(args.allowed_endpoints),
        allow_loopback_endpoints=args.allow_loopback_endpoints,
        allow_insecure_endpoints=args.allow_insecure_endpoints,
        max_expected_count=args.max_expected_count,
        max_namespace_instances=args.max_namespace_instances,
        max_total_instances=args.max_total_instances,
        max_price=max_price,
        allowed_instance_types=tuple(args.allowed_instance_types),
        on_demand_namespaces=tuple(args.on_demand_namespaces),
        operator_identity=args.operator_identity,
        cvm_role=args.cvm_role,
        sts_endpoint=args.sts_endpoint,
        metadata_endpoint=args.metadata_endpoint,
        secret_credentials=args.secret_credentials,
        operator_identity_namespaces=tuple(args.operator_identity_namespaces),
        allowed_roles=tuple(args.allowed_roles),
        orphan_release=args.orphan_release,
        orphan_grace=args.orphan_grace,
    )
    try:
        Policy.from_config(config)
    except (PolicyError, CredentialPolicyError) as exc:
        parser.error(str(exc))
    return config


def configure_logging(config: OperatorConfig) -> None:
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    root = logging.getLogger()
    root.setLevel(config.log_level.upper())
    REDACTOR.install()  # every logger, kopf's per-object one (whose records become Events) included
    # The HTTP client logs request lines at INFO; they add nothing the API metrics do not show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


async def run(config: OperatorConfig) -> None:
    from spotpool.controller import handlers  # registers the kopf handlers

    handlers.register(config)
    from spotpool.controller.health import describe, serve
    from spotpool.controller.runtime import Runtime

    runtime = Runtime(config)
    serving = await serve(runtime, config)
    logging.getLogger(__name__).info("%s", describe(serving, config))
    try:
        # kopf installs its own SIGTERM/SIGINT handlers and stops gracefully on them. The runtime
        # reaches every handler through kopf's operator-level memo.
        await kopf.operator(standalone=True, clusterwide=config.clusterwide, namespaces=config.namespaces,
                            memo=kopf.Memo(runtime=runtime))
    finally:
        await serving.cleanup()


def cli(argv: list[str] | None = None) -> int:
    config = parse(argv)
    configure_logging(config)
    asyncio.run(run(config))
    return 0

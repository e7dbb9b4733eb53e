"""`spotpool operator` flags: defaults, every flag, environment defaults, refusals."""

from __future__ import annotations

import pytest

from spotpool.controller.cli import parse
from spotpool.controller.config import OperatorConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPOTPOOL_CLUSTER_ID", "SPOTPOOL_LOG_LEVEL", "SPOTPOOL_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    config = parse([])
    assert config == OperatorConfig(
        namespaces=(), metrics_host="0.0.0.0", metrics_port=8443, metrics_secure=True, metrics_cert_file=None,
        metrics_key_file=None, health_host="0.0.0.0", health_port=8081, observe_interval=15.0,
        progress_interval=2.0, cluster_id=None, log_level="info", log_format="plain",
    )
    assert config.clusterwide


def test_every_flag() -> None:
    config = parse([
        "--namespace=batch", "-n", "render-*", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--observe-interval", "7.5", "--progress-interval=0.25", "--cluster-id", "prod-eu",
        "--log-level", "debug", "--log-format", "json",
    ])
    assert config.namespaces == ("batch", "render-*")
    assert not config.clusterwide
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 0)
    assert (config.observe_interval, config.progress_interval) == (7.5, 0.25)
    assert config.cluster_id == "prod-eu"
    assert (config.log_level, config.log_format) == ("debug", "json")


def test_metrics_and_health_flags() -> None:
    config = parse(["--no-metrics-secure", "--health-host=127.0.0.1", "--health-port=9000"])
    assert (config.metrics_secure, config.health_host, config.health_port) == (False, "127.0.0.1", 9000)
    config = parse(["--metrics-cert-file=/certs/tls.crt", "--metrics-key-file=/certs/tls.key"])
    assert config.metrics_secure and (config.metrics_cert_file, config.metrics_key_file) == (
        "/certs/tls.crt", "/certs/tls.key")
    assert parse(["--metrics-port=0", "--health-port=0"]).health_port == 0  # both free ports: allowed


@pytest.mark.parametrize(("argv", "message"), [
    (["--metrics-cert-file=/c"], "go together"),
    (["--metrics-key-file=/k"], "go together"),
    (["--no-metrics-secure", "--metrics-cert-file=/c", "--metrics-key-file=/k"], "plain HTTP"),
    (["--metrics-port=8081"], "for both"),
    (["--health-port=70000"], "not a TCP port"),
])
def test_metrics_flags_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_all_namespaces_is_cluster_wide() -> None:
    config = parse(["-A"])
    assert config.namespaces == () and config.clusterwide
    assert parse(["--all-namespaces"]).clusterwide


def test_environment_supplies_defaults_and_flags_override_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTPOOL_CLUSTER_ID", "from-env")
    monkeypatch.setenv("SPOTPOOL_LOG_LEVEL", "warning")
    monkeypatch.setenv("SPOTPOOL_LOG_FORMAT", "json")
    config = parse([])
    assert (config.cluster_id, config.log_level, config.log_format) == ("from-env", "warning", "json")
    config = parse(["--cluster-id=flag", "--log-level=error", "--log-format=plain"])
    assert (config.cluster_id, config.log_level, config.log_format) == ("flag", "error", "plain")


@pytest.mark.parametrize("argv", [
    ["-n", "batch", "-A"],  # a namespace list and all namespaces exclude each other
    ["--log-level", "verbose"],
    ["--log-format", "xml"],
    ["--metrics-port", "http"],
    ["--observe-interval", "soon"],
    ["--no-such-flag"],
])
def test_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 2
    assert "spotpool operator" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value"), [("SPOTPOOL_LOG_LEVEL", "verbose"), ("SPOTPOOL_LOG_FORMAT", "xml")])
def test_invalid_log_settings_from_the_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit):
        parse([])
    assert variable in capsys.readouterr().err


def test_cvm_rate_limits_are_parsed_per_action() -> None:
    config = parse(["--cvm-rate-limit", "RunInstances=5", "--cvm-rate-limit", "DescribeInstances=12.5"])
    assert config.rate_limits == {"RunInstances": 5.0, "DescribeInstances": 12.5}


@pytest.mark.parametrize("bad", ["RunInstances", "RunInstances=fast", "=3", "RunInstances=0"])
def test_malformed_cvm_rate_limits_are_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--cvm-rate-limit", bad])
    assert "--cvm-rate-limit" in capsys.readouterr().err


def test_leader_election_flags() -> None:
    assert not parse([]).leader_elect
    config = parse(["--leader-elect", "--leader-election-namespace=spotpool-system", "--lease-duration=30",
                    "--renew-deadline=20", "--retry-period=4"])
    assert (config.leader_elect, config.leader_election_namespace, config.lease_duration, config.renew_deadline,
            config.retry_period) == (True, "spotpool-system", 30, 20.0, 4.0)
    assert not parse(["--leader-elect", "--no-leader-elect"]).leader_elect


@pytest.mark.parametrize(("args", "message"), [
    (["--lease-duration=10"], "greater than the renew deadline"),
    (["--renew-deadline=2"], "greater than jitter"),
    (["--lease-duration=1.5"], "invalid int value"),
    # A past leader's last purchase must land before an unanswered one is settled (60 s).
    (["--lease-duration=60", "--renew-deadline=45"], "--renew-deadline: at most 30 s"),
])
def test_unsafe_leader_election_timings_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse(["--leader-elect", *args])
    assert message in capsys.readouterr().err


def test_orphan_collector_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert (parse([]).orphan_release, parse([]).orphan_grace) == (True, 120.0)
    config = parse(["--no-orphan-release", "--orphan-grace=600"])
    assert (config.orphan_release, config.orphan_grace) == (False, 600.0)
    with pytest.raises(SystemExit):
        parse(["--orphan-grace=-1"])
    assert "--orphan-grace" in capsys.readouterr().err


def test_first_passes_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([]).first_passes_at_once == 50
    assert parse(["--first-passes-at-once=200"]).first_passes_at_once == 200
    with pytest.raises(SystemExit):
        parse(["--first-passes-at-once=0"])
    assert "--first-passes-at-once: must be at least 1" in capsys.readouterr().err

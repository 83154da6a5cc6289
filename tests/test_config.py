"""Settings: defaults, the seed's Helm values, our tree, environment, flags, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8spacket.config import ConfigError, Settings, load_settings

#: the seed chart's values file, committed (tests/data/seed/README.md says where it came from)
SEED = Path(__file__).parent / "data" / "seed" / "k8spacket-values.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    s = load_settings()
    assert (s.http.host, s.http.port, s.listen) == ("0.0.0.0", 6676, "0.0.0.0:6676")
    assert (s.tracker.flush_period, s.tracker.close_older_than) == (10.0, 20.0)
    assert s.tracker.forget_after == 0.0  # 10 minutes, or closeOlderThan when longer
    assert s.metrics.hide_source_port is True
    assert s.capture.snap_length == 96


def test_the_seed_values_file_is_accepted(tmp_path: Path) -> None:
    s = load_settings(SEED)  # in the repository: never skipped
    assert s.http.port == 6676
    assert s.capture.interfaces.command.startswith("ip address")
    assert s.capture.interfaces.refresh_period == 10.0
    assert (s.tracker.flush_period, s.tracker.close_older_than) == (10.0, 20.0)
    assert s.enrichment.geoip_db_path == "/home/k8spacket/GeoLite2-City.mmdb"
    assert s.enrichment.whois_regexp == r"(?:OrgName:|org-name:)\s*(.*)"


@pytest.mark.parametrize(
    ("text", "forget", "error"),
    [
        ("tracker:\n  forgetAfter: 1h\n", 3600.0, ""),
        ("tracker:\n  closeOlderThan: 30s\n  forgetAfter: 30s\n", 30.0, ""),
        ("tracker:\n  forgetAfter: 5s\n", 20.0, ""),  # raised to closeOlderThan: the old rule
        ("tracker:\n  closeOlderThan: 30m\n", 0.0, ""),  # 0: the tracker takes the longer
        ("tracker:\n  forgetAfter: never\n", 0.0, "tracker.forgetAfter: not a duration"),
    ],
    ids=["hour", "old-rule-equal", "shorter-than-idle", "long-idle-timeout", "not-a-duration"],
)
def test_forget_after(tmp_path: Path, text: str, forget: float, error: str) -> None:
    if error:
        with pytest.raises(ConfigError, match=error):
            load_settings(write(tmp_path, text))
        return
    assert load_settings(write(tmp_path, text)).tracker.forget_after == forget


@pytest.mark.parametrize(
    ("sets", "want", "error"),
    [
        ([], ("lean", 65536, 30.0), ""),
        (["capture.mode=full"], ("full", 65536, 30.0), ""),
        (["capture.leanBoundary=1MiB", "capture.leanWarmup=0"], ("lean", 1 << 20, 0.0), ""),
        (["capture.mode=sparse"], None, "capture.mode: must be one of lean, full"),
        (["capture.leanBoundary=100000"], None, "capture.leanBoundary: must be a power of two"),
        (["capture.leanWarmup=-1s"], None, "capture.leanWarmup"),
    ],
    ids=["defaults", "full", "boundary-and-no-warmup", "bad-mode", "not-power-of-two", "negative"],
)
def test_capture_mode_settings(
    sets: list[str], want: tuple[str, int, float] | None, error: str
) -> None:
    if error:
        with pytest.raises(ConfigError, match=error):
            load_settings(sets=sets)
        return
    c = load_settings(sets=sets).capture
    assert (c.mode, c.lean_boundary, c.lean_warmup) == want


def test_order_file_then_env_then_flags(tmp_path: Path) -> None:
    f = write(tmp_path, "k8sPacket:\n  tcp:\n    listener:\n      port: 7000\n"
              "tracker:\n  flushPeriod: 3s\n")  # fmt: skip
    s = load_settings(f, {})
    assert (s.http.port, s.tracker.flush_period) == (7000, 3.0)
    env = {
        "K8S_PACKET_TCP_LISTENER_PORT": "7001",
        "K8S_PACKET_TCP_ASSEMBLER_FLUSHING_PERIOD_DURATION": "4s",
        "K8S_PACKET_TCP_ASSEMBLER_FLUSHING_CLOSE_OLDER_THAN_DURATION": "1m",
        "K8S_PACKET_HIDE_SRC_PORT": "false",
        "K8S_PACKET_TCP_LISTENER_INTERFACES_COMMAND": "echo veth1",
        "K8S_PACKET_TCP_LISTENER_INTERFACES_REFRESH_PERIOD": "5s",
        "K8S_PACKET_REVERSE_GEOIP2_DB_PATH": "/x.mmdb",
        "K8S_PACKET_REVERSE_WHOIS_REGEXP": "org: (.*)",
    }
    s = load_settings(f, env)
    assert (s.http.port, s.tracker.flush_period, s.tracker.close_older_than) == (7001, 4.0, 60.0)
    assert s.metrics.hide_source_port is False
    assert s.capture.interfaces.command == "echo veth1"
    assert s.capture.interfaces.refresh_period == 5.0
    assert (s.enrichment.geoip_db_path, s.enrichment.whois_regexp) == ("/x.mmdb", "org: (.*)")
    s = load_settings(f, env, listen="127.0.0.1:7002", sets=["capture.ringSize=16MiB"])
    assert (s.http.host, s.http.port, s.capture.ring_size) == ("127.0.0.1", 7002, 16 << 20)


def test_every_section_has_settings() -> None:
    s = Settings()
    for section in ("capture", "tracker", "metrics", "enrichment", "kubernetes", "http"):
        assert getattr(s, section) is not None
    assert s.inventory == ""


@pytest.mark.parametrize(
    ("text", "env", "flags", "message"),
    [
        ("tracker:\n  flushPeriod: soon\n", {}, {}, "tracker.flushPeriod: not a duration"),
        ("tracker:\n  flushPeriod: 0s\n", {}, {}, "tracker.flushPeriod: must be positive"),
        ("k8sPacket:\n  tcp:\n    listener:\n      port: 70000\n", {}, {},
         "k8sPacket.tcp.listener.port: must be between 1 and 65535"),
        ("capture:\n  ringsize: 1MiB\n", {}, {}, "capture.ringsize: unknown key"),
        ("k8sPacket:\n  bogus: 1\n", {}, {}, "k8sPacket.bogus: unknown key"),
        ("capture:\n  interfaces:\n    exclude: ['(']\n", {}, {}, "capture.interfaces.exclude: bad regexp"),
        ("", {"K8S_PACKET_HIDE_SRC_PORT": "maybe"}, {}, "K8S_PACKET_HIDE_SRC_PORT: expected true or false"),
        ("", {"K8S_PACKET_TCP_LISTENER_PORT": "http"}, {}, "K8S_PACKET_TCP_LISTENER_PORT: expected a whole number"),
        ("", {}, {"listen": "localhost"}, "--listen: expected HOST:PORT"),
        ("", {}, {"sets": ["nope=1"]}, "--set nope: unknown key"),
        ("", {}, {"sets": ["capture.ringsize=1MiB"]},
         "--set capture.ringsize: unknown key (did you mean capture.ringSize?)"),
        ("", {}, {"sets": ["capture.ringSize"]}, "--set capture.ringSize: expected PATH=VALUE"),
        ("metrics:\n  labels: [src_port]\n", {}, {}, "metrics.labels: src_port needs"),
        ("[1, 2]\n", {}, {}, "expected a mapping"),
        ("a: [\n", {}, {}, "line 2 column 1: not valid YAML: expected the node content"),
        ("a: b: c\n", {}, {}, "line 1 column 5: not valid YAML: mapping values are not allowed here"),
    ],
    ids=["duration", "zero", "port", "unknown", "seed-unknown", "regexp", "env-bool", "env-port",
         "listen", "set-unknown", "set-near-miss", "set-no-value", "src-port", "not-mapping",
         "yaml-unclosed", "yaml-mapping"],
)  # fmt: skip
def test_bad_values_are_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], flags: dict[str, object], message: str
) -> None:
    f = write(tmp_path, text) if text else None
    with pytest.raises(ConfigError) as e:
        load_settings(f, env, **flags)  # type: ignore[arg-type]
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_helm_chart_keys_are_ignored_but_ours_are_checked(tmp_path: Path) -> None:
    f = write(tmp_path, "image:\n  repository: x\nk8sPacket:\n  tcp:\n    assembler:\n"
              "      maxPagesTotal: 50\n")  # fmt: skip
    assert load_settings(f).http.port == 6676


def test_run_with_a_bad_value_stops_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = write(tmp_path, "tracker:\n  closeOlderThan: forever\n")
    r = subprocess.run(
        [sys.executable, "-m", "k8spacket.cli", "run", "--config", str(f)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"k8spacket: {f}: tracker.closeOlderThan: not a duration: 'forever' "
        "(use e.g. 10s, 1m30s, 250ms)"
    ]


def _port_in_use() -> tuple[object, int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize(
    ("config", "env", "args", "message"),
    [
        ("", {}, ["--set", "capture.ringsize=1MiB"],
         "--set capture.ringsize: unknown key (did you mean capture.ringSize?)"),
        ("a: b: c\n", {}, [], "{config}: line 1 column 5: not valid YAML: "
         "mapping values are not allowed here"),
        ("", {}, ["--set", "enrichment.geoip.dbPath=/nonexistent/City.mmdb"],
         "--set enrichment.geoip.dbPath: GeoIP database '/nonexistent/City.mmdb' does not exist"),
        ("k8sPacket:\n  metrics:\n    reverseLookup:\n      geoipDBPath: /nonexistent/C.mmdb\n",
         {}, [], "{config}: k8sPacket.metrics.reverseLookup.geoipDBPath: GeoIP database "
         "'/nonexistent/C.mmdb' does not exist"),
        ("", {"K8S_PACKET_REVERSE_GEOIP2_DB_PATH": "/nonexistent/E.mmdb"}, [],
         "K8S_PACKET_REVERSE_GEOIP2_DB_PATH: GeoIP database '/nonexistent/E.mmdb' does not exist"),
        ("", {}, ["--set", "enrichment.geoip.asnDBPath=/nonexistent/A.mmdb"],
         "--set enrichment.geoip.asnDBPath: GeoIP database '/nonexistent/A.mmdb' does not exist"),
        ("", {}, ["--set", "kubernetes.enabled=auto", "--set", "kubernetes.kubeconfig={tmp}"],
         "--set kubernetes.kubeconfig: '{tmp}' is a directory, not a kubeconfig"),
        ("", {"KUBECONFIG": "{tmp}/" + "k" * 300}, ["--set", "kubernetes.enabled=auto"],
         "KUBECONFIG: cannot read '{tmp}/" + "k" * 300 + "': File name too long"),
        ("", {}, ["--set", "enrichment.geoip.enabled=false"],
         "cannot listen on 127.0.0.1:{busy}: Address already in use"),
    ],
    ids=["set-unknown-key", "yaml-reason", "geoip-set", "geoip-seed-key", "geoip-env",
         "geoip-asn", "kubeconfig-directory", "kubeconfig-unreadable", "port-busy"],
)  # fmt: skip
def test_run_errors_name_the_real_cause_and_the_key_typed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: str,
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    """``k8spacket run`` start-up errors: one line, the cause, the key as the user wrote it."""
    from k8spacket.cli import main

    sock, busy = _port_in_use()
    try:
        fill = {"tmp": str(tmp_path), "busy": str(busy)}
        # the port is taken: a case that got past its own error stops there, never runs
        argv = ["run", "--listen", f"127.0.0.1:{busy}", "--set", "kubernetes.enabled=false"]
        if config:
            fill["config"] = str(write(tmp_path, config))
            argv += ["--config", fill["config"]]
        monkeypatch.delenv("KUBECONFIG", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v.format(**fill))
        code = main([*argv, *(a.format(**fill) for a in args)])
    finally:
        sock.close()  # type: ignore[attr-defined]
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [line for line in err if line.startswith("k8spacket:")] == [
        "k8spacket: " + message.format(**fill)
    ]

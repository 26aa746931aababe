"""The deploy/ files, checked with the tools the plant uses (promtool, systemd-analyze).

Tests that need a tool skip, naming the Debian package, when it is not installed:
``apt-get install prometheus systemd`` (see docs/how-to/deploy.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from drdaemon.exits import EXIT_CONFIG
from drdaemon.service.prometheus import STAGES, DaemonMetrics
from tests.testkit import REPO

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "drdaemon.service"
RULES = DEPLOY / "prometheus" / "drdaemon-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "drdaemon.json"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package '{package}')")
    return path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; keys may repeat (DeviceAllow=), so values are lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


# --- systemd ---------------------------------------------------------------------------


def test_unit_restarts_on_failure_but_not_on_bad_config() -> None:
    service = unit_settings(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"][0].split()
    assert float(service["WatchdogSec"][0]) > 0
    assert service["ExecStart"][0].endswith("drdaemon run --config /etc/drdaemon/config.toml")


def test_unit_sandbox_leaves_the_gpu_reachable() -> None:
    service = unit_settings(UNIT.read_text())["Service"]
    assert "PrivateDevices" not in service  # it would hide /dev/nvidia*
    assert service["DevicePolicy"] == ["closed"]
    allowed = " ".join(service["DeviceAllow"])
    for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"):
        assert f"{node} rw" in allowed
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"]
    assert service["User"] == ["drdaemon"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    # verify insists that ExecStart's program exists; on a development machine it is not
    # at /opt/drdaemon, so verify a copy that points at this checkout's (or any) program.
    # Everything else (keys, values, sandboxing, device rules) is verified as shipped.
    program = Path(sys.executable).with_name("drdaemon")
    if not program.exists():
        program = Path(shutil.which("true") or "/bin/true")
    text = UNIT.read_text()
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={program}", text, count=1, flags=re.M)
    copy = tmp_path / "drdaemon.service"
    copy.write_text(text)
    result = run(analyze, "verify", "--man=no", str(copy))
    # verify only warns (exit 0) about unknown keys and bad values: any line about the
    # unit is a finding.
    findings = [
        line for line in (result.stdout + result.stderr).splitlines() if str(copy) in line or "drdaemon.service" in line
    ]
    assert result.returncode == 0, result.stderr
    assert findings == []


# --- Prometheus ------------------------------------------------------------------------


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_alert_rules_fire_when_they_should() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "drdaemon-rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_finds_no_problem_in_the_exposition() -> None:
    promtool = tool("promtool", "prometheus")
    metrics = DaemonMetrics()
    metrics.set_build_info(version="0.1.0", engine="net", weights_sha256="0" * 64, torch="2.14.1", cuda="12.8")
    metrics.set_device_memory("cuda:0", 1 << 20, 4 << 20)
    metrics.frame_succeeded(pixels=1000, latency_s=0.4)
    metrics.frame_failed(stage="read", reason="truncated")
    result = run(promtool, "check", "metrics", stdin=generate_latest(metrics.registry).decode())
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def cpu_station_exposition() -> str:
    """What a CPU station running the classical engine without weights exposes after a few frames."""
    metrics = DaemonMetrics()
    metrics.set_build_info(version="0.1.0", engine="classical", weights_sha256=None, torch="2.14.1", cuda=None)
    for stage in ("wait", "read", "window", "enhance", "write", "sidecar"):
        metrics.observe_stage(stage, 0.05)
    metrics.frame_succeeded(pixels=1000, latency_s=0.4)
    metrics.frame_failed(stage="read", reason="truncated")
    return generate_latest(metrics.registry).decode()


def test_promtool_finds_no_problem_in_a_cpu_station_exposition() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "check", "metrics", stdin=cpu_station_exposition())
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_exposition_has_no_created_series_and_no_empty_label() -> None:
    text = cpu_station_exposition()
    assert "_created" not in text
    assert '=""' not in text
    assert (
        'drdaemon_build_info{cuda="none",engine="classical",torch="2.14.1",version="0.1.0",weights_sha256="none"} 1.0'
        in text
    )


# --- Grafana ---------------------------------------------------------------------------


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_dashboard_imports_without_editing() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    # The data source is a variable, so the JSON imports as-is into any Grafana.
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in (
        "frames per second",
        "megapixels per second",
        "latency",
        "stage duration p95",
        "queue",
        "by reason",
        "device memory",
        "free disk space",
        "frames pruned",
        "pruning behind",
    ):
        assert topic in titles


def test_dashboard_only_queries_metrics_the_daemon_exports() -> None:
    metrics = DaemonMetrics()
    metrics.set_device_memory("cuda:0", 1, 1)
    metrics.set_build_info(version="x", engine="x", weights_sha256=None, torch="x", cuda=None)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    used = {name for expr in dashboard_queries() for name in re.findall(r"\b(?:drdaemon|process)_\w+", expr)}
    assert used and used <= exported, used - exported


def test_dashboard_per_stage_panels_name_the_stages_the_daemon_exports() -> None:
    board = json.loads(DASHBOARD.read_text())
    stage_panels = [p for p in board["panels"] if "each stage" in p.get("description", "")]
    assert len(stage_panels) == 3
    for panel in stage_panels:
        named = re.findall(r"\b[a-z]+\b", panel["description"].split(":", 1)[1])
        assert [w for w in named if w in STAGES] == list(STAGES), panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    # promtool parses PromQL in rule files: wrap each panel query in a recording rule,
    # with Grafana's variables replaced by what Grafana would put there.
    grafana_vars = {"$__rate_interval": "1m", "$__range": "6h", "$instance": ".*"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_queries()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    result = run(promtool, "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the install guide -----------------------------------------------------------------

GUIDE = DEPLOY / "README.md"


def guide_shell_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", GUIDE.read_text(), flags=re.M | re.S)


def test_every_shell_block_of_the_install_guide_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    blocks = guide_shell_blocks()
    assert len(blocks) >= 20
    for block in blocks:
        result = run(bash, "-n", stdin=block.replace("<drdaemon repository>", "REPO"))
        assert result.returncode == 0, block + result.stderr


def test_the_install_guide_steps_are_numbered_in_order_and_cover_a_plant_install() -> None:
    text = GUIDE.read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1))
    commands = "\n".join(guide_shell_blocks())
    for needed in (
        "apt-get install -y python3-venv",  # a bare Debian/Ubuntu has no venv module
        "--index-url https://download.pytorch.org/whl/cpu",  # the CPU build of torch
        "pip download",
        "--no-index --find-links",  # the air-gapped wheelhouse
        "setfacl",
        "usermod -aG drdaemon",  # the station's write access
        "smbpasswd",
        "cifs",
        "polling = true",  # a Windows station's share
        "journald.conf.d",
        "MaxRetentionSec",  # journal retention
        "apt-get install -y prometheus",
        "drdaemon-rules.yml",  # Prometheus and the rules
        "apt-get install -y grafana",
        "provisioning/dashboards",  # Grafana and the dashboard
        "pinned.txt",
        "daemon-reload",
        'ln -sfn "$OLD"',  # pinned upgrade and rollback
        "drdaemon selftest --config /etc/drdaemon/config.toml",  # the smoke test
    ):
        assert needed in commands or needed in text, needed
    # The last install step before upgrading is the smoke test.
    assert text.index("## 12. Smoke test") < text.index("## 13. Upgrading")

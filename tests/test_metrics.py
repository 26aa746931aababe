"""The metrics a Prometheus server scrapes from a daemon, read back through the real parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drdaemon.errors import Reason, Stage
from drdaemon.service.prometheus import BUCKETS_S, STAGES, DaemonMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(metrics: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(metrics.registry).decode())


def test_series_exist_at_zero_before_any_frame() -> None:
    got = scrape(DaemonMetrics())
    assert got[("drdaemon_frames_total", (("result", "ok"),))] == 0
    assert got[("drdaemon_frames_total", (("result", "failed"),))] == 0
    assert got[("drdaemon_errors_total", (("reason", "truncated"), ("stage", "read")))] == 0
    assert got[("drdaemon_errors_total", (("reason", "device_error"), ("stage", "enhance")))] == 0
    for stage in STAGES:
        assert got[("drdaemon_stage_duration_seconds_count", (("stage", stage),))] == 0
    assert got[("drdaemon_pixels_total", ())] == 0
    assert got[("drdaemon_watcher_up", ())] == 0
    assert got[("drdaemon_last_success_timestamp_seconds", ())] == 0


def test_frames_and_histograms_move() -> None:
    metrics = DaemonMetrics()
    metrics.observe_stage("read", 0.02)
    metrics.observe_stage("compute", 1.7)
    metrics.frame_succeeded(pixels=5732 * 2333, latency_s=1.9)
    metrics.frame_succeeded(pixels=100, latency_s=3.5)
    metrics.frame_failed(stage=Stage.READ, reason=Reason.TRUNCATED)
    metrics.frame_failed(stage="upload", reason="device_error")
    got = scrape(metrics)

    assert got[("drdaemon_frames_total", (("result", "ok"),))] == 2
    assert got[("drdaemon_frames_total", (("result", "failed"),))] == 2
    assert got[("drdaemon_pixels_total", ())] == 5732 * 2333 + 100
    assert got[("drdaemon_errors_total", (("reason", "truncated"), ("stage", "read")))] == 1
    assert got[("drdaemon_errors_total", (("reason", "device_error"), ("stage", "upload")))] == 1
    assert got[("drdaemon_stage_duration_seconds_count", (("stage", "read"),))] == 1
    assert got[("drdaemon_stage_duration_seconds_sum", (("stage", "compute"),))] == pytest.approx(1.7)
    # 2 s is the takt: the latency histogram must be able to tell "within takt" exactly.
    assert 2.0 in BUCKETS_S and BUCKETS_S[0] == 0.005 and BUCKETS_S[-1] == 60.0
    assert got[("drdaemon_frame_latency_seconds_bucket", (("le", "2.0"),))] == 1
    assert got[("drdaemon_frame_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert got[("drdaemon_last_success_timestamp_seconds", ())] > 1.7e9


def test_gauges_and_build_info() -> None:
    metrics = DaemonMetrics()
    metrics.set_inbox_depth(7)
    metrics.set_queue_depth(2)
    metrics.set_in_flight(1)
    metrics.set_watcher_up(True)
    metrics.set_device_memory("cuda:0", in_use=3 << 20, reserved=8 << 20)
    metrics.set_build_info(version="0.1.0", engine="classical", weights_sha256=None, torch="2.14.1", cuda=None)
    metrics.set_build_info(version="0.1.0", engine="net", weights_sha256="ab" * 32, torch="2.14.1", cuda="12.8")
    got = scrape(metrics)
    assert got[("drdaemon_inbox_frames", ())] == 7
    assert got[("drdaemon_queue_frames", ())] == 2
    assert got[("drdaemon_frames_in_flight", ())] == 1
    assert got[("drdaemon_watcher_up", ())] == 1
    assert got[("drdaemon_device_memory_in_use_bytes", (("device", "cuda:0"),))] == 3 << 20
    assert got[("drdaemon_device_memory_reserved_bytes", (("device", "cuda:0"),))] == 8 << 20
    info = [key for key in got if key[0] == "drdaemon_build_info"]
    # Switching engines replaces the series rather than leaving a stale second one.
    assert len(info) == 1
    labels = dict(info[0][1])
    assert labels["engine"] == "net" and labels["weights_sha256"] == "ab" * 6
    assert labels["cuda"] == "12.8" and labels["torch"] == "2.14.1"


def test_unknown_labels_are_refused() -> None:
    metrics = DaemonMetrics()
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_stage("frame.tif", 0.1)
    with pytest.raises(ValueError, match="reason"):
        metrics.frame_failed(stage="read", reason="a file name")
    assert scrape(metrics)[("drdaemon_frames_total", (("result", "failed"),))] == 0


def test_two_instances_do_not_share_state() -> None:
    first, second = DaemonMetrics(), DaemonMetrics()
    first.frame_succeeded(pixels=10, latency_s=0.1)
    assert scrape(second)[("drdaemon_frames_total", (("result", "ok"),))] == 0


def test_a_live_scrape_has_no_created_series_in_either_format() -> None:
    metrics = DaemonMetrics()
    metrics.frame_succeeded(pixels=42, latency_s=0.3)
    metrics.observe_stage("enhance", 0.2)
    port = metrics.serve("127.0.0.1", 0)
    try:
        for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
            assert "drdaemon_frames_total" in text and "drdaemon_stage_duration_seconds_bucket" in text, accept
            assert "_created" not in text, accept
    finally:
        metrics.close()


def test_leaving_out_created_series_changes_no_other_registry() -> None:
    from prometheus_client import CollectorRegistry, Counter

    other = CollectorRegistry()
    Counter("station_frames", "A counter of some other library in the same process.", registry=other)
    DaemonMetrics()
    assert "station_frames_created" in generate_latest(other).decode()


def test_build_info_has_no_empty_label_on_a_cpu_station_without_weights() -> None:
    metrics = DaemonMetrics()
    metrics.set_build_info(version="0.1.0", engine="classical", weights_sha256=None, torch="", cuda=None)
    info = [dict(labels) for name, labels in scrape(metrics) if name == "drdaemon_build_info"]
    assert info == [
        {"version": "0.1.0", "engine": "classical", "weights_sha256": "none", "torch": "none", "cuda": "none"}
    ]


def test_stage_labels_are_the_sidecar_timing_words() -> None:
    metrics = DaemonMetrics()
    for stage in ("wait", "read", "window", "enhance", "upload", "compute", "download", "write", "sidecar"):
        metrics.observe_stage(stage, 0.1)
    assert scrape(metrics)[("drdaemon_stage_duration_seconds_count", (("stage", "enhance"),))] == 1


def test_http_endpoint_serves_the_registry() -> None:
    metrics = DaemonMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert port > 0
        metrics.frame_succeeded(pixels=42, latency_s=0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            got = samples(response.read().decode())
        assert got[("drdaemon_pixels_total", ())] == 42
        assert ("process_resident_memory_bytes", ()) in got
    finally:
        metrics.close()

"""The CI-sized reliability run: 50,000 calls through the real broker, workers and sink
while workers and the sink are SIGKILLed (the sink inside an insert and between an insert
and its commit), the broker restarts and the store is cut off.

Everything must come out as `cdrpipe replay` of the same messages computes it:
nothing lost, nothing doubled, every field and every money total equal, and the
dead-letter topic holding exactly the malformed messages and the orphans' events.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.chaos import ChaosPlan, ChaosRun


@pytest.mark.parametrize(
    ("engine", "partitioner"),
    [("batch", "murmur2"), ("faust", "murmur2"), ("batch", "crc32"), ("faust", "crc32")],
)
def test_nothing_lost_nothing_doubled_under_kills_broker_restart_and_store_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, partitioner: str
) -> None:
    """With crc32 (librdkafka's default) seven messages in eight are forwarded to their
    call's partition: deadlines must wait for what is still on its way."""
    monkeypatch.setenv("CDRPIPE_WORKER_ENGINE", engine)
    plan = ChaosPlan(
        calls=50_000,
        workers=2,
        kills=2,
        sink_kills=2,
        broker_restarts=1,
        outage_s=20,
        segments=10,
        seed=11,
        timeout_s=900,
        partitioner=partitioner,
    )
    report = ChaosRun(plan, tmp_path).run()
    print(report.render())
    assert len(report.kills) == 2 and all(k["recovery_s"] is not None for k in report.kills)
    assert sorted((k["point"], k["exit"]) for k in report.sink_kills) == [
        ("before-commit", -9),
        ("during-insert", -9),
    ]
    assert len(report.broker_restarts) == 1
    assert report.broker_restarts[0]["recovery_s"] is not None
    assert report.outage["seconds"] == 20 and report.outage["backlog_at_end"] > 0
    # the sink does not buffer the backlog the outage builds up: it stays in Kafka
    assert report.outage["sink_rss_peak_mib"] < report.outage["sink_rss_before_mib"] + 64
    assert report.unexpected_exits == []
    assert report.expected_cdrs > 50_000 * 0.98
    assert report.lost == 0 and report.unexpected == 0 and report.doubled == 0
    assert report.differing == 0, report.example_diff
    assert report.totals_stream == report.totals_replay
    assert report.dlq_expected["invalid"] >= 250 and report.dlq_expected["orphan"] > 0
    assert report.dlq_stored == report.dlq_expected == report.dlq_replay
    assert report.dlq_content_equal
    assert report.ok

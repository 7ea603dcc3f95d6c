"""Fixtures for tests that need the real local Kafka broker or embedded stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.chaos import free_ports
from pipeline.core.model import CDR
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import ensure_topics
from pipeline.store.client import connect
from pipeline.store.queries import CdrFilter, select_cdrs

PARTITIONS = 8


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A fresh single-node KRaft broker with the pipeline's topics, stopped afterwards."""
    port, controller_port = free_ports(2)
    kafka = LocalKafka(data_dir=tmp_path / "kafka", port=port, controller_port=controller_port)
    kafka.start()
    try:
        ensure_topics(kafka.bootstrap, PARTITIONS)
        yield kafka
    finally:
        kafka.stop(timeout=15)


def dump_store(dsn: str) -> dict[str, CDR]:
    """Every stored CDR (as queries see them) by call id; the client is closed again."""
    client = connect(dsn)
    try:
        return {
            cdr.id: cdr
            for direction in ("outbound", "inbound")
            for cdr in select_cdrs(client, CdrFilter(direction=direction))
        }
    finally:
        client.close()

"""Fixtures for tests that need the real local Kafka broker or embedded stores."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.model import CDR
from pipeline.kafka.broker import LocalKafka
from pipeline.kafka.topics import ensure_topics
from pipeline.store.client import connect
from pipeline.store.queries import CdrFilter, select_cdrs

PARTITIONS = 8


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS just had free (held open together so they cannot repeat)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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

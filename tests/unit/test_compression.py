"""The workers' output compression: zstd unless configured otherwise, and a value no Kafka
producer knows refused at start instead of at the first produce."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from pipeline import config


def test_zstd_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDRPIPE_COMPRESSION", raising=False)
    assert config.compression() == "zstd"


@pytest.mark.parametrize(("value", "expected"), [("none", None), ("lz4", "lz4"), ("gzip", "gzip")])
def test_configured(monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None) -> None:
    monkeypatch.setenv("CDRPIPE_COMPRESSION", value)
    assert config.compression() == expected


def test_unknown_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDRPIPE_COMPRESSION", "snappy2")
    with pytest.raises(ValueError, match="CDRPIPE_COMPRESSION='snappy2'"):
        config.compression()


async def _producer() -> None:
    AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", compression_type=config.compression())


def test_the_producer_can_compress_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka needs its codec library (cramjam) for zstd and lz4: without it the worker's
    producer refuses to be created."""
    monkeypatch.delenv("CDRPIPE_COMPRESSION", raising=False)
    asyncio.run(_producer())

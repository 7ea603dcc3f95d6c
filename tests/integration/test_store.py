"""The ClickHouse store against a real embedded chDB engine.

chDB allows one data directory per process at a time (a different one only after every client
of the previous one is closed), so each test opens its own directory under tmp_path and closes
its client on teardown: tests stay independent and leave the engine free for other tests.
Times are relative to now because rows older than the two-month TTL really disappear.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from pipeline.core.model import CDR
from pipeline.store.client import (
    COLUMNS,
    TABLES,
    Client,
    StoreError,
    _split_database,
    connect,
    default_dsn,
    redact_dsn,
)
from pipeline.store.export import INBOUND_HEADER, OUTBOUND_HEADER, write_csv
from pipeline.store.queries import CdrFilter, count_cdrs, select_cdrs, totals
from pipeline.store.writer import DEFAULT_BATCH_SIZE, CdrWriter, decode_row, encode_row
from pipeline.stream.codec import cdr_to_bytes

BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)


def outbound(n: int = 0, **changes: object) -> CDR:
    start = BASE + timedelta(minutes=n, microseconds=123456)
    cdr = CDR(
        id=f"gw1-out-{n}",
        direction="outbound",
        account="acc-1",
        gateway="gw1",
        start_time=start,
        connect_time=start + timedelta(seconds=2, microseconds=500),
        end_time=start + timedelta(seconds=63),
        source="4420712345" + str(n % 10),
        destination="15551234567",
        duration=61,
        disconnect_code=200,
        disconnect_reason="Bye",
        disconnect_initiator="origination",
        status="answered",
        cdr_type="International",
        country_name="United States",
        network_name="Fixed",
        trunk="Outbound Trunk 1",
        cli="442071234567",
        billing_duration=120,
        rate=Decimal("0.0123"),
        charged=Decimal("0.024600"),
    )
    return dataclasses.replace(cdr, **changes)  # type: ignore[arg-type]


def inbound(n: int = 0, **changes: object) -> CDR:
    start = BASE + timedelta(minutes=n, seconds=30)
    cdr = CDR(
        id=f"gw2-in-{n}",
        direction="inbound",
        account="acc-2",
        gateway="gw2",
        start_time=start,
        connect_time=start + timedelta(seconds=1),
        end_time=start + timedelta(seconds=33),
        source="12345678901",
        destination="sip:100@pbx.example.com",
        duration=32,
        disconnect_code=200,
        disconnect_reason="Bye",
        disconnect_initiator="destination",
        status="answered",
        cdr_type="Local",
        country_name="United Kingdom",
        network_name="Toll-free",
        trunk="",
        did="448001234567",
        toll_free_amount=Decimal("0.860000"),
        termination_amount=None,
        metered_amount=Decimal("0.330000"),
    )
    return dataclasses.replace(cdr, **changes)  # type: ignore[arg-type]


Write = Callable[..., int]


def _write_objects(client: Client, cdrs: list[CDR], batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    return CdrWriter(client, batch_size=batch_size).write(cdrs)


def _write_json(client: Client, cdrs: list[CDR], batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """The sink's path: the records as they travel on `cdr.records`, parsed by the store."""
    return CdrWriter(client, batch_size=batch_size).write_json([cdr_to_bytes(c) for c in cdrs])


def _write_rows(client: Client, cdrs: list[CDR], batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """A parallel replay's path: rows of their table made where the CDRs were built."""
    writer = CdrWriter(client, batch_size=batch_size)
    rows = [(c.direction, encode_row(c)) for c in cdrs]  # refuses what a table cannot hold
    return sum(
        writer.write_rows(direction, [r for d, r in rows if d == direction])
        for direction in ("outbound", "inbound")
    )


@pytest.fixture(params=[_write_objects, _write_json, _write_rows], ids=["objects", "json", "rows"])
def write(request: pytest.FixtureRequest, store: Client) -> Write:
    """Every way CDRs reach the tables: `CdrWriter.write` (replay), `write_json` (sink) and
    `write_rows` (parallel replay)."""
    return functools.partial(request.param, store)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'store'}")
    try:
        yield client
    finally:
        client.close()


def fetch(client: Client, direction: str = "outbound", **filters: object) -> list[CDR]:
    return list(select_cdrs(client, CdrFilter(direction=direction, **filters)))  # type: ignore[arg-type]


# --- schema and connection -------------------------------------------------------------------


def test_tables_have_exactly_the_code_columns(store: Client) -> None:
    for direction, table in TABLES.items():
        names = [row[0] for row in store.query(f"DESCRIBE TABLE {table}").result_rows]
        assert names == [*COLUMNS[direction], "ingested_at"]


def test_every_cdr_field_is_stored_in_its_direction_table() -> None:
    names = {f.name for f in dataclasses.fields(CDR)} - {"direction"}
    only_out = {"cli", "billing_duration", "rate", "charged"}
    only_in = {"did", "toll_free_amount", "termination_amount", "metered_amount"}
    assert set(COLUMNS["outbound"]) == names - only_in
    assert set(COLUMNS["inbound"]) == names - only_out


@pytest.mark.parametrize(
    ("dsn", "base", "database"),
    [
        ("chdb:///var/lib/cdr", "chdb:///var/lib/cdr", None),
        ("chdb:///var/lib/cdr?database=x&foo=1", "chdb:///var/lib/cdr?foo=1", "x"),
        ("chdb://memory/x", "chdb://memory", "x"),
        ("http://u:p@ch:8123/cdr?compress=false", "http://u:p@ch:8123?compress=false", "cdr"),
        ("https://ch:8443", "https://ch:8443", None),
    ],
)
def test_database_is_read_from_the_dsn(dsn: str, base: str, database: str | None) -> None:
    assert _split_database(dsn) == (base, database)


def test_ttl_two_months_on_start_and_daily_partitions(store: Client) -> None:
    for table in TABLES.values():
        ddl = store.command(f"SHOW CREATE TABLE {table}")
        assert isinstance(ddl, str)
        ddl = ddl.replace("\\n", "\n")
        assert "TTL toDateTime(start_time) + toIntervalMonth(2)" in ddl
        assert "ttl_only_drop_parts = 1" in ddl
        assert "ReplacingMergeTree(revision)" in ddl
        assert "PARTITION BY toYYYYMMDD(start_time)" in ddl
        assert "ORDER BY (account, start_time, id)" in ddl


def test_schema_apply_is_idempotent_and_keeps_rows(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'store'}"
    with connect(dsn) as client:
        CdrWriter(client).write([outbound(1)])
    with connect(dsn) as client:
        assert fetch(client) == [outbound(1)]


def test_database_in_dsn_is_created_and_used(tmp_path: Path) -> None:
    with connect(f"chdb://{tmp_path / 'store'}?database=billing") as client:
        assert client.query("SELECT currentDatabase()").result_rows == [("billing",)]
        CdrWriter(client).write([outbound(1)])
        rows = client.query("SELECT count() FROM billing.cdr_outbound").result_rows
        assert rows == [(1,)]


def test_bare_directory_means_embedded_store(tmp_path: Path) -> None:
    with connect(str(tmp_path / "plain")) as client:
        assert fetch(client) == []
    assert (tmp_path / "plain").is_dir()


def test_default_dsn_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CDRPIPE_STORE", raising=False)
    monkeypatch.setenv("CDRPIPE_DATA", str(tmp_path / "d"))
    assert default_dsn() == f"chdb://{tmp_path / 'd' / 'store'}"
    monkeypatch.setenv("CDRPIPE_STORE", "http://ch:8123/cdr")
    assert default_dsn() == "http://ch:8123/cdr"


def test_redact_dsn_hides_password() -> None:
    assert redact_dsn("http://bob:s3cret@host:8123/db") == "http://bob:***@host:8123/db"
    assert redact_dsn("chdb:///data/store") == "chdb:///data/store"


def test_second_directory_while_one_is_open_is_a_clear_error(store: Client, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="another chDB directory open"):
        connect(f"chdb://{tmp_path / 'other'}")


def test_ingested_at_is_filled(store: Client) -> None:
    CdrWriter(store).write([outbound(1)])
    (ingested,) = store.query("SELECT ingested_at FROM cdr_outbound").result_rows[0]
    assert abs(ingested.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)


# --- writing and idempotency -----------------------------------------------------------------


def test_round_trip_keeps_every_field(store: Client, write: Write) -> None:
    cdrs = [
        outbound(1),
        outbound(
            2,
            connect_time=None,
            duration=0,
            billing_duration=0,
            status="busy",
            disconnect_code=486,
            disconnect_reason="Busy Here",
            charged=Decimal("0.000000"),
        ),
        outbound(3, rated=False, rate=None, charged=None, billing_duration=None),
        outbound(
            4,
            timed_out=True,
            disconnect_code=None,
            disconnect_initiator=None,
            disconnect_reason="",
            revision=3,
        ),
        inbound(1),
        inbound(
            2,
            did=None,
            toll_free_amount=None,
            metered_amount=None,
            termination_amount=Decimal("0.240000"),
        ),
    ]
    assert write(cdrs) == 6
    got = fetch(store) + fetch(store, "inbound")
    assert got == cdrs
    assert all(c.start_time.tzinfo is UTC for c in got)
    assert got[0].start_time.microsecond == 123456


def test_same_cdr_twice_is_one_row(store: Client, write: Write) -> None:
    write([outbound(1), inbound(1)])
    write([outbound(1), inbound(1)])
    write([outbound(1)])
    assert fetch(store) == [outbound(1)]
    assert count_cdrs(store, CdrFilter(direction="outbound")) == 1
    assert count_cdrs(store, CdrFilter(direction="inbound")) == 1
    raw = store.query("SELECT count() FROM cdr_outbound").result_rows[0][0]
    assert raw in (1, 3)  # duplicates linger until a merge; FINAL hides them


def test_corrected_revision_wins_whatever_the_order(store: Client, write: Write) -> None:
    first = outbound(1, timed_out=True, disconnect_code=None, disconnect_initiator=None)
    fixed = outbound(1, revision=2)
    write([first])
    write([fixed])
    assert fetch(store) == [fixed]
    write([first])  # a stale copy written late
    assert fetch(store) == [fixed]
    store.command("OPTIMIZE TABLE cdr_outbound FINAL")
    assert store.query("SELECT count(), max(revision) FROM cdr_outbound").result_rows == [(1, 2)]


def test_same_revision_rewritten_keeps_the_last_write(store: Client, write: Write) -> None:
    write([outbound(1, charged=Decimal("1.000000"))])
    write([outbound(1, charged=Decimal("2.000000"))])
    assert [c.charged for c in fetch(store)] == [Decimal("2.000000")]


def test_batches_split_and_mixed_directions(store: Client, write: Write) -> None:
    cdrs = [outbound(n) if n % 3 else inbound(n) for n in range(250)]
    assert write(cdrs, batch_size=40) == 250
    assert count_cdrs(store, CdrFilter(direction="outbound")) == 166
    assert count_cdrs(store, CdrFilter(direction="inbound")) == 84


def test_naive_times_are_taken_as_utc(store: Client, write: Write) -> None:
    aware = outbound(1)
    naive = dataclasses.replace(
        aware,
        start_time=aware.start_time.replace(tzinfo=None),
        connect_time=None,
        end_time=aware.end_time.replace(tzinfo=None),
    )
    write([naive])
    (got,) = fetch(store)
    assert got.start_time == aware.start_time and got.end_time == aware.end_time


@pytest.mark.parametrize(
    "changes",
    [
        {"charged": Decimal("0.0000001")},  # finer than the column: would be truncated
        {"rate": Decimal("0.0000000001")},
        {"charged": 0.5},  # binary float
        {"charged": Decimal("NaN")},
        {"charged": Decimal("1E+13")},
    ],
)
def test_money_the_column_cannot_hold_is_refused(
    store: Client, write: Write, changes: dict
) -> None:
    with pytest.raises(StoreError, match="gw1-out-1"):
        write([outbound(1, **changes)])
    assert fetch(store) == []


@pytest.mark.parametrize(
    ("text", "stored"),
    [("1E-8", Decimal("0.00000001")), ("2.5E+2", Decimal("250")), ("-0E-9", Decimal("0"))],
)
def test_json_money_in_exponent_form_is_stored_when_exact(
    store: Client, text: str, stored: Decimal
) -> None:
    record = orjson.loads(cdr_to_bytes(outbound(1)))
    record["rate"] = text
    CdrWriter(store).write_json([orjson.dumps(record)])
    assert fetch(store)[0].rate == stored


def test_json_record_without_defaulted_fields_gets_the_defaults(store: Client) -> None:
    """Records written before `rated`, `timed_out` and `revision` existed."""
    record = orjson.loads(cdr_to_bytes(outbound(1, rated=False, rate=None, charged=None)))
    for name in ("rated", "timed_out", "revision"):
        del record[name]
    CdrWriter(store).write_json([orjson.dumps(record)])
    (got,) = fetch(store)
    assert (got.rated, got.timed_out, got.revision) == (True, False, 1)


@pytest.mark.parametrize(
    "record",
    [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"id": "x", "direction": "sideways"}),
        orjson.dumps(
            {k: v for k, v in orjson.loads(cdr_to_bytes(outbound(1))).items() if k != "account"}
        ),
    ],
    ids=["not-json", "not-an-object", "unknown-direction", "missing-field"],
)
def test_json_records_that_are_not_cdrs_are_refused(store: Client, record: bytes) -> None:
    with pytest.raises(StoreError):
        CdrWriter(store).write_json([cdr_to_bytes(inbound(1)), record])
    assert fetch(store, "inbound") == []


def test_rate_with_nine_decimals_is_exact(store: Client, write: Write) -> None:
    write([outbound(1, rate=Decimal("0.012345678"))])
    assert fetch(store)[0].rate == Decimal("0.012345678")


# --- filters, ordering, paging ---------------------------------------------------------------


@pytest.fixture
def loaded(store: Client) -> Client:
    CdrWriter(store).write(
        [
            outbound(0),
            outbound(
                1,
                account="acc-9",
                source="4930123",
                destination="4420711111",
                cdr_type="Origin based",
            ),
            outbound(
                2,
                status="busy",
                connect_time=None,
                duration=0,
                billing_duration=0,
                disconnect_code=486,
                charged=Decimal("0.000000"),
            ),
            outbound(3, rated=False, rate=None, charged=None),
            outbound(4, timed_out=True, cdr_type="Local", destination="15559876543"),
            inbound(0),
            inbound(1, did="15550001111", destination="tel:+4420799999", status="no-answer"),
        ]
    )
    return store


def ids(cdrs: list[CDR]) -> list[str]:
    return [c.id for c in cdrs]


def test_every_filter(loaded: Client) -> None:
    start = [BASE + timedelta(minutes=n, microseconds=123456) for n in range(5)]
    assert ids(fetch(loaded)) == [f"gw1-out-{n}" for n in range(5)]
    # inclusive from, exclusive to
    assert ids(fetch(loaded, time_from=start[1], time_to=start[3])) == ["gw1-out-1", "gw1-out-2"]
    assert ids(fetch(loaded, time_from=start[4])) == ["gw1-out-4"]
    assert ids(fetch(loaded, time_to=start[0])) == []
    assert ids(fetch(loaded, account="acc-9")) == ["gw1-out-1"]
    assert ids(fetch(loaded, account="acc")) == []  # exact, not prefix
    assert ids(fetch(loaded, source="4930")) == ["gw1-out-1"]
    assert ids(fetch(loaded, destination="1555")) == [
        "gw1-out-0",
        "gw1-out-2",
        "gw1-out-3",
        "gw1-out-4",
    ]
    assert ids(fetch(loaded, destination="15559")) == ["gw1-out-4"]
    assert ids(fetch(loaded, cdr_type="Origin based")) == ["gw1-out-1"]
    assert ids(fetch(loaded, status="busy")) == ["gw1-out-2"]
    assert ids(fetch(loaded, rated=False)) == ["gw1-out-3"]
    assert ids(fetch(loaded, timed_out=True)) == ["gw1-out-4"]
    assert ids(
        fetch(loaded, account="acc-1", status="answered", destination="1555", time_from=start[3])
    ) == ["gw1-out-3", "gw1-out-4"]


def test_inbound_destination_matches_did_or_uri(loaded: Client) -> None:
    assert ids(fetch(loaded, "inbound", destination="4480")) == ["gw2-in-0"]  # the DID
    assert ids(fetch(loaded, "inbound", destination="sip:100")) == ["gw2-in-0"]  # the URI
    assert ids(fetch(loaded, "inbound", destination="1555")) == ["gw2-in-1"]
    assert ids(fetch(loaded, "inbound", status="no-answer")) == ["gw2-in-1"]


def test_ordered_by_start_then_id_and_keyset_paging(store: Client) -> None:
    same = BASE + timedelta(hours=1)
    cdrs = [
        outbound(n, start_time=same if n % 2 else BASE + timedelta(minutes=90 - n))
        for n in range(20)
    ]
    CdrWriter(store).write(reversed(cdrs))
    everything = fetch(store)
    keys = [(c.start_time, c.id) for c in everything]
    assert keys == sorted(keys) and len(keys) == 20
    pages: list[CDR] = []
    after: tuple[datetime, str] | None = None
    while True:
        flt = CdrFilter(direction="outbound")
        page = list(select_cdrs(store, flt, limit=6, offset_after=after))
        if not page:
            break
        pages += page
        after = (page[-1].start_time, page[-1].id)
    assert pages == everything


def test_totals_are_exact_decimals(loaded: Client) -> None:
    out = totals(loaded, CdrFilter(direction="outbound"))
    assert (out.count, out.unrated, out.timed_out) == (5, 1, 1)
    assert out.charged == Decimal("0.073800")  # three calls at 0.024600, one at 0, one unrated
    assert out.toll_free_amount is None
    inb = totals(loaded, CdrFilter(direction="inbound"))
    assert (inb.count, inb.unrated, inb.timed_out) == (2, 0, 0)
    assert inb.toll_free_amount == Decimal("1.72")
    assert inb.termination_amount == Decimal("0")
    assert inb.metered_amount == Decimal("0.66")
    assert inb.charged is None
    empty = totals(loaded, CdrFilter(direction="outbound", account="nobody"))
    assert (empty.count, empty.charged) == (0, Decimal(0))


@pytest.mark.parametrize(
    "evil",
    ["' OR 1=1 --", "acc-1' OR '1'='1", "\\'; DROP TABLE x; --", "{account:String}", "%", "_"],
)
def test_filter_values_are_parameters_never_sql(loaded: Client, evil: str) -> None:
    for field in ("account", "source", "destination"):
        assert fetch(loaded, **{field: evil}) == []
        assert fetch(loaded, "inbound", **{field: evil}) == []
    assert count_cdrs(loaded, CdrFilter(direction="outbound")) == 5


def test_bad_filters_are_clear_value_errors() -> None:
    with pytest.raises(ValueError, match="direction must be one of 'inbound', 'outbound'"):
        CdrFilter(direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cdr_type must be one of"):
        CdrFilter(direction="outbound", cdr_type="local")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status must be one of"):
        CdrFilter(direction="outbound", status="ok")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be before"):
        CdrFilter(direction="outbound", time_from=BASE, time_to=BASE)
    with pytest.raises(ValueError, match="time_from must be an ISO date"):
        CdrFilter.from_strings(direction="outbound", time_from="yesterday")


def test_filter_from_strings() -> None:
    flt = CdrFilter.from_strings(
        direction="inbound",
        time_from="2026-01-02",
        time_to="2026-01-03T01:00:00+01:00",
        account="",
        source="44",
        cdr_type="Local",
        status=None,
    )
    assert flt.time_from == datetime(2026, 1, 2, tzinfo=UTC)
    assert flt.time_to == datetime(2026, 1, 3, tzinfo=UTC)
    assert (flt.account, flt.source, flt.cdr_type, flt.status) == (None, "44", "Local", None)


# --- retention -------------------------------------------------------------------------------


def test_rows_older_than_two_months_disappear(store: Client) -> None:
    old = outbound(1, id="old", start_time=datetime.now(UTC) - timedelta(days=70))
    CdrWriter(store).write([old, outbound(2)])
    assert ids(fetch(store)) == ["gw1-out-2"]  # hidden at once, before any merge
    store.command("OPTIMIZE TABLE cdr_outbound FINAL")
    rows = store.query("SELECT id FROM cdr_outbound").result_rows
    assert rows == [("gw1-out-2",)]  # and gone from the table after the TTL merge


# --- export from the store -------------------------------------------------------------------


def test_write_csv_streams_the_filtered_rows(loaded: Client) -> None:
    out = io.StringIO()
    assert write_csv(loaded, CdrFilter(direction="outbound", status="answered"), out) == 4
    lines = out.getvalue().split("\n")
    assert lines[0] == ",".join(OUTBOUND_HEADER)
    assert len(lines) == 6 and lines[-1] == ""
    assert lines[1].startswith(f"{BASE:%Y-%m-%d %H:%M:%S},")
    out = io.StringIO()
    assert write_csv(loaded, CdrFilter(direction="inbound", account="nobody"), out) == 0
    assert out.getvalue() == ",".join(INBOUND_HEADER) + "\n"


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_row_codec_round_trips_every_field(direction: str) -> None:
    """`decode_row(encode_row(c)) == c`, the other direction's fields None; money keeps its
    value (a zero with an exponent comes back as plain 0.000000)."""
    cdr = outbound(7) if direction == "outbound" else inbound(7)
    assert decode_row(direction, encode_row(cdr)) == cdr
    zero = dataclasses.replace(cdr, **{MONEY[direction]: Decimal("0E-6")})
    back = decode_row(direction, encode_row(zero))
    assert getattr(back, MONEY[direction]) == 0 and back == zero
    assert str(getattr(back, MONEY[direction])) == "0.000000"


MONEY = {"outbound": "charged", "inbound": "metered_amount"}


def test_rows_of_an_unknown_direction_are_refused(store: Client) -> None:
    with pytest.raises(StoreError, match="unknown direction"):
        encode_row(dataclasses.replace(outbound(1), direction="sideways"))  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="unknown direction"):
        CdrWriter(store).write_rows("sideways", [encode_row(outbound(1))])
    assert fetch(store) == []

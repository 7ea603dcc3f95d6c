"""The simulator's output must be exactly what SPEC section 1 says, and its ground truth
(``expected``) must match what is really in the messages: pipeline tests rely on both.

Everything is recomputed from the bytes with an independent checker here; the ``tag``
of a message is only used where the intent cannot be seen in the bytes (which kind of
malformation, which message was held back as late).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest
from aiokafka.partitioner import murmur2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from pipeline import simulate
from pipeline.simulate import (
    DESTINATIONS,
    MALFORMED_KINDS,
    SOURCES,
    UNPRICED_DESTINATIONS,
    SimConfig,
    SimMessage,
    build_parser,
    generate,
    iter_messages,
    main,
    number_pool,
    produce,
    write_jsonl,
)

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"
START = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
TOPIC = {"start": "sip.call.start", "connect": "sip.call.connect", "end": "sip.call.end"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
DIGITS = re.compile(r"^\d{6,15}$")
START_FIELDS = {
    "event",
    "id",
    "ts",
    "gateway",
    "direction",
    "account",
    "source",
    "destination",
    "did",
    "trunk",
}
END_FIELDS = {"event", "id", "ts", "disconnect_code", "disconnect_reason", "disconnect_initiator"}
RANK = {"start": 0, "connect": 1, "end": 2}
KNOWN_TRUNKS = {"Outbound Trunk 1", "Outbound Trunk 2", "Outbound Trunk 3", "Outbound Trunk 4"}
NO_TERMINATION_DIDS = {"33142685300"}  # dids.csv: no termination_deck
WITHHELD_WORDS = {"anonymous", "Restricted", "unknown"}
UNPRICED_PREFIXES = tuple(UNPRICED_DESTINATIONS)


def cfg(**kw: Any) -> SimConfig:
    kw.setdefault("config_dir", CONFIG)
    kw.setdefault("start", START)
    return SimConfig(**kw)


def invalid_reason(value: bytes) -> str | None:
    """Why a message breaks SPEC section 1, or None if it is a valid event."""
    if len(value) > 64 * 1024:
        return "over 64 KiB"
    try:
        obj = orjson.loads(value)  # strict: rejects NaN and invalid UTF-8
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(obj, dict):
        return "not an object"
    event = obj.get("event")
    if event not in RANK:
        return "event"
    call_id = obj.get("id")
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
        return "id"
    ts = obj.get("ts")
    if not isinstance(ts, str) or not RFC3339.match(ts):
        return "ts"
    if event == "start":
        for name in ("gateway", "account", "source", "destination"):
            if not isinstance(obj.get(name), str):
                return name
        source = obj["source"]
        if source and not caller_digits(source).isdigit() and source not in WITHHELD_WORDS:
            return "source"
        direction = obj.get("direction")
        if direction == "outbound":
            if not DIGITS.match(obj["destination"]):
                return "destination"
            if not isinstance(obj.get("trunk"), str):
                return "trunk"
        elif direction == "inbound":
            if not isinstance(obj.get("did"), str) or not DIGITS.match(obj["did"]):
                return "did"
            dest = obj["destination"]
            if not (dest.startswith(("sip:", "tel:+")) or DIGITS.match(dest)):
                return "destination"
            if "trunk" in obj and not isinstance(obj["trunk"], str):
                return "trunk"
        else:
            return "direction"
    elif event == "end":
        code = obj.get("disconnect_code")
        if type(code) is not int or not 100 <= code <= 699:
            return "disconnect_code"
        if not isinstance(obj.get("disconnect_reason"), str):
            return "disconnect_reason"
        if obj.get("disconnect_initiator") not in ("origination", "destination"):
            return "disconnect_initiator"
    return None


def caller_digits(source: str) -> str:
    """A caller ID's digits once the "+" or "00" gateways put in front is stripped."""
    return source[1:] if source.startswith("+") else source[2:] if source[:2] == "00" else source


def region_of(digits: str) -> str | None:
    """libphonenumber's region of a valid number; None for an invalid one."""
    number = phonenumbers.parse("+" + digits)
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.region_code_for_number(number)


def is_raw(source: str) -> bool:
    """Whether a caller ID is in a raw form: E.164 digits never start with 0."""
    return source != "" and (not source.isdigit() or source.startswith("0"))


def rated_number(start: dict[str, Any]) -> str | None:
    """The number a call's rate is looked up for: the outbound destination on a known trunk,
    an inbound destination forwarded to the PSTN (digits or tel:); else None."""
    dest = start["destination"]
    if start["direction"] == "outbound":
        return dest if start["trunk"] in KNOWN_TRUNKS else None
    if dest.startswith("tel:+"):
        return dest[5:]
    return dest if dest.isdigit() else None


def instant(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def status(connected: bool, code: int, initiator: str) -> str:
    if connected:
        return "answered"
    if code in (486, 600):
        return "busy"
    if code in (408, 480):
        return "no_answer"
    if code == 487 and initiator == "origination":
        return "cancelled"
    return "failed"


def recount(messages: list[SimMessage]) -> dict[str, int]:
    """Ground truth recomputed from the bytes alone, keyed like ``Simulation.expected``."""
    seen: set[bytes] = set()
    first: dict[str, dict[str, dict[str, Any]]] = {}
    order: dict[str, list[tuple[datetime, int]]] = {}
    per_call_msgs: Counter[str] = Counter()
    out = Counter(messages=len(messages))
    for m in messages:
        if invalid_reason(m.value) is not None:
            out["malformed_messages"] += 1
            continue
        if m.value in seen:
            out["duplicate_messages"] += 1
            continue
        seen.add(m.value)
        obj = orjson.loads(m.value)
        call = first.setdefault(obj["id"], {})
        call[obj["event"]] = obj
        order.setdefault(obj["id"], []).append((instant(obj["ts"]), RANK[obj["event"]]))
        per_call_msgs[obj["id"]] += 1
    out["calls"] = len(first)
    for call_id, events in first.items():
        if "start" not in events:
            out["orphan_calls"] += 1
            out["orphan_messages"] += per_call_msgs[call_id]
            continue
        start = events["start"]
        out[start["direction"]] += 1
        number = rated_number(start)
        out["unpriced_destination"] += bool(number and number.startswith(UNPRICED_PREFIXES))
        out["raw_caller_ids"] += is_raw(start["source"])
        if "end" not in events:
            out["never_ending"] += 1
            continue
        out["calls_with_start_and_end"] += 1
        end = events["end"]
        out[status("connect" in events, end["disconnect_code"], end["disconnect_initiator"])] += 1
    out["reordered_calls"] = sum(1 for seq in order.values() if seq != sorted(seq))
    return dict(out)


MIXED = dict(
    reorder=0.05,
    duplicate=0.05,
    late=0.05,
    orphan=0.04,
    never_ending=0.03,
    malformed=0.03,
    raw_caller_ids=0.05,
)


@pytest.fixture(scope="module")
def mixed() -> simulate.Simulation:
    return generate(cfg(calls=3000, seed=7, **MIXED))


@pytest.fixture(scope="module")
def clean() -> simulate.Simulation:
    return generate(cfg(calls=20000, seed=11))


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = generate(cfg(calls=300, seed=5, **MIXED))
    b = generate(cfg(calls=300, seed=5, **MIXED))
    assert a.messages == b.messages and a.expected == b.expected
    c = generate(cfg(calls=300, seed=6, **MIXED))
    assert [m.value for m in c.messages] != [m.value for m in a.messages]
    expected: dict[str, int] = {}
    assert list(iter_messages(cfg(calls=300, seed=5, **MIXED), expected)) == a.messages
    assert expected == a.expected


def test_valid_messages_have_spec_fields_topic_and_key(mixed: simulate.Simulation) -> None:
    valid = [m for m in mixed.messages if not m.tag.startswith("malformed")]
    assert len(valid) == len(mixed.messages) - mixed.expected["malformed_messages"]
    for m in valid:
        assert invalid_reason(m.value) is None, m
        obj = orjson.loads(m.value)
        assert m.topic == TOPIC[obj["event"]]
        assert m.key == obj["id"].encode()
        assert re.fullmatch(r"gw-[a-z]{3}\d-s7-\d{9}", obj["id"])
        if obj["event"] == "start":
            assert set(obj) <= START_FIELDS
            assert set(obj) >= START_FIELDS - {"did", "trunk"}
            if obj["direction"] == "outbound":
                assert "did" not in obj
            else:
                assert obj["did"] in {
                    "18005550100",
                    "18005550101",
                    "12015550123",
                    "442079460123",
                    "493012345678",
                    "33142685300",
                }
        elif obj["event"] == "end":
            assert set(obj) == END_FIELDS
        else:
            assert set(obj) == {"event", "id", "ts"}


def test_expected_matches_what_is_in_the_messages(mixed: simulate.Simulation) -> None:
    exp = mixed.expected
    got = recount(mixed.messages)
    for name in (
        "calls",
        "calls_with_start_and_end",
        "never_ending",
        "orphan_calls",
        "orphan_messages",
        "malformed_messages",
        "duplicate_messages",
        "reordered_calls",
        "inbound",
        "outbound",
        "messages",
        "answered",
        "busy",
        "no_answer",
        "cancelled",
        "failed",
        "unpriced_destination",
        "raw_caller_ids",
    ):
        assert got.get(name, 0) == exp[name], name
    n = 3000
    assert exp["calls"] == n
    assert exp["orphan_calls"] == round(0.04 * n)
    assert exp["never_ending"] == round(0.03 * n)
    assert exp["duplicate_messages"] == round(0.05 * n)
    assert exp["late_messages"] == round(0.05 * n)
    assert exp["malformed_messages"] == round(0.03 * n)
    assert exp["reordered_calls"] >= round(0.05 * n)
    assert exp["inbound"] + exp["outbound"] == n - exp["orphan_calls"]
    statuses = sum(exp[s] for s in ("answered", "busy", "no_answer", "cancelled", "failed"))
    assert statuses == exp["calls_with_start_and_end"]


def test_tags_agree_with_counts(mixed: simulate.Simulation) -> None:
    tags = Counter(m.tag.split(":")[0] for m in mixed.messages)
    exp = mixed.expected
    assert tags["duplicate"] == exp["duplicate_messages"]
    assert tags["late"] == exp["late_messages"]
    assert tags["malformed"] == exp["malformed_messages"]
    assert tags["reordered"] == round(0.05 * 3000)


def test_unperturbed_messages_come_in_timestamp_order(mixed: simulate.Simulation) -> None:
    times = [instant(orjson.loads(m.value)["ts"]) for m in mixed.messages if m.tag == ""]
    assert times == sorted(times)


def test_late_messages_arrive_after_newer_events(mixed: simulate.Simulation) -> None:
    times: list[datetime | None] = [
        None if m.tag.startswith("malformed") else instant(orjson.loads(m.value)["ts"])
        for m in mixed.messages
    ]
    newest = datetime.min.replace(tzinfo=UTC)
    last = max(t for t in times if t is not None)
    late = 0
    for m, t in zip(mixed.messages, times, strict=True):
        if t is None:
            continue
        if m.tag == "late":
            late += 1
            assert orjson.loads(m.value)["event"] in ("connect", "end")
            # The stream has moved on by at least a minute, unless it has run out.
            assert newest >= t + timedelta(seconds=59) or newest >= last - timedelta(minutes=20)
            assert newest - t <= timedelta(minutes=21)
        newest = max(newest, t)
    assert late == mixed.expected["late_messages"]


def test_no_newline_in_any_value_and_oversize_is_one_line() -> None:
    sim = generate(cfg(calls=400, seed=3, malformed=1.0, **{"duplicate": 0.1}))
    assert all(b"\n" not in m.value and b"\r" not in m.value for m in sim.messages)
    big = [m for m in sim.messages if m.tag == "malformed:oversize"]
    assert big and all(len(m.value) > 64 * 1024 for m in big)


def test_every_malformed_kind_is_invalid_in_its_own_way() -> None:
    sim = generate(cfg(calls=2 * len(MALFORMED_KINDS), seed=9, malformed=1.0))
    bad = [m for m in sim.messages if m.tag.startswith("malformed:")]
    assert {m.tag.split(":")[1] for m in bad} == set(MALFORMED_KINDS)
    assert sum(invalid_reason(m.value) is not None for m in sim.messages) == len(bad)
    for m in bad:
        kind, v = m.tag.split(":")[1], m.value
        assert invalid_reason(v) is not None, m
        assert m.topic in TOPIC.values()
        if kind in ("not_json", "truncated", "invalid_utf8", "nan_literal"):
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(v)
        if kind == "truncated":
            assert v.startswith(b"{")
        elif kind == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                v.decode("utf-8")
        elif kind == "nan_literal":
            assert json.loads(v)["disconnect_code"] != json.loads(v)["disconnect_code"]
        elif kind == "oversize":
            assert len(v) > 64 * 1024 and isinstance(orjson.loads(v), dict)
        elif kind == "not_object":
            assert isinstance(orjson.loads(v), list)
        elif kind not in ("not_json",):
            obj = orjson.loads(v)
            if kind == "ts_number":
                assert isinstance(obj["ts"], float)
            elif kind == "missing_field":
                required = (
                    START_FIELDS - {"did", "trunk", "source", "destination"}
                    if obj.get("event") == "start"
                    else END_FIELDS
                )
                if obj.get("event") == "start" and obj.get("direction") == "outbound":
                    required = required | {"trunk"}
                assert not required <= set(obj), obj
            elif kind == "invalid_enum":
                assert (
                    obj["event"] not in RANK
                    or obj.get("direction") == "sideways"
                    or obj.get("disconnect_initiator") == "both"
                )
            elif kind == "code_99":
                assert obj["disconnect_code"] == 99
            elif kind == "id_too_long":
                assert len(obj["id"]) > 128 and m.key == obj["id"].encode()
            elif kind == "empty_id":
                assert obj["id"] == "" and m.key == b""
            elif kind == "naive_ts":
                assert instant(obj["ts"]).tzinfo is None


def test_default_mixes_look_like_real_traffic(clean: simulate.Simulation) -> None:
    exp = clean.expected
    n = exp["calls"]
    assert exp["calls_with_start_and_end"] == n
    assert exp["messages"] == len(clean.messages)
    assert 0.67 < exp["outbound"] / n < 0.73
    assert 0.52 < exp["answered"] / n < 0.58
    for name, share in (("busy", 0.10), ("no_answer", 0.10), ("cancelled", 0.10), ("failed", 0.15)):
        assert abs(exp[name] / n - share) < 0.02, name
    starts, connects, ends = {}, {}, {}
    forms: Counter[str] = Counter()
    for m in clean.messages:
        obj = orjson.loads(m.value)
        ts = obj["ts"]
        forms["Z" if ts.endswith("Z") else "+00:00" if ts.endswith("+00:00") else "other"] += 1
        frac = re.search(r"\.(\d+)", ts)
        forms[f"frac{len(frac.group(1)) if frac else 0}"] += 1
        {"start": starts, "connect": connects, "end": ends}[obj["event"]][obj["id"]] = obj
    total = len(clean.messages)
    assert forms["Z"] > total / 2 and forms["+00:00"] > total / 5 and forms["other"] > total / 20
    assert forms["frac3"] > total / 2 and forms["frac6"] > total / 10 and forms["frac0"] > 0
    durations = [
        (instant(ends[i]["ts"]) - instant(c["ts"])).total_seconds() for i, c in connects.items()
    ]
    rings = [
        (instant(c["ts"]) - instant(starts[i]["ts"])).total_seconds() for i, c in connects.items()
    ]
    assert 75 < statistics.median(durations) < 110
    assert min(durations) >= 0 and max(durations) <= 7200
    assert min(rings) >= 0 and max(rings) <= 30
    outbound = [s for s in starts.values() if s["direction"] == "outbound"]
    inbound = [s for s in starts.values() if s["direction"] == "inbound"]
    trunks = Counter(s["trunk"] for s in outbound)
    assert set(trunks) >= {f"Outbound Trunk {k}" for k in (1, 2, 3, 4)}
    assert 0 < sum(trunks[t] for t in ("Outbound Trunk 99", "legacy-trunk-x")) < 0.02 * n
    assert exp["unknown_trunk"] == sum(trunks[t] for t in ("Outbound Trunk 99", "legacy-trunk-x"))
    account_of = {
        "Outbound Trunk 1": "acc-1001",
        "Outbound Trunk 2": "acc-1002",
        "Outbound Trunk 3": "acc-1003",
        "Outbound Trunk 4": "acc-1004",
    }
    assert all(account_of.get(s["trunk"], s["account"]) == s["account"] for s in outbound)
    # Called numbers are valid numbers of every listed country, 2 % of them unpriced; caller
    # IDs are valid numbers or withheld (empty), none in a raw form by default.
    regions = Counter(region_of(s["destination"]) for s in outbound)
    assert set(regions) == {k.region for k in DESTINATIONS}
    unpriced = sum(s["destination"].startswith(UNPRICED_PREFIXES) for s in outbound)
    assert 0.01 < unpriced / len(outbound) < 0.03
    sources = Counter(region_of(s["source"]) if s["source"] else "" for s in starts.values())
    assert set(sources) == {k.region for k in SOURCES}
    assert sources[""] > 0.05 * n and exp["raw_caller_ids"] == 0
    kinds = Counter(
        "sip"
        if s["destination"].startswith("sip:")
        else "tel"
        if s["destination"].startswith("tel:+")
        else "pstn"
        for s in inbound
    )
    assert all(kinds[k] > 0.03 * len(inbound) for k in ("sip", "tel", "pstn"))
    # Only DIDs with a termination deck forward calls to the PSTN.
    no_term = [s for s in inbound if s["did"] in NO_TERMINATION_DIDS]
    assert no_term and all(s["destination"].startswith("sip:") for s in no_term)
    assert all(region_of(number) for s in inbound if (number := rated_number(s)))
    assert 0.3 < sum("trunk" in s for s in inbound) / len(inbound) < 0.7
    codes = Counter((e["disconnect_code"], e["disconnect_reason"]) for e in ends.values())
    assert {
        (200, "Bye"),
        (486, "Busy Here"),
        (600, "Busy Everywhere"),
        (408, "Request Timeout"),
        (480, "Temporarily Unavailable"),
        (487, "Request Terminated"),
        (503, "Service Unavailable"),
    } <= set(codes)


def test_number_pools_are_valid_numbers_of_their_kind() -> None:
    wanted = {
        "fixed": {PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE},
        "mobile": {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE},
    }
    for kind in DESTINATIONS + SOURCES:
        pool = number_pool(kind)
        if not kind.region:
            assert pool == ("",)
            continue
        assert len(pool) == len(set(pool)) >= 50, kind
        for digits in pool:
            number = phonenumbers.parse("+" + digits)
            assert phonenumbers.is_valid_number(number), digits
            assert phonenumbers.region_code_for_number(number) == kind.region, digits
            assert phonenumbers.number_type(number) in wanted[kind.network], digits
            if kind.seed:
                assert digits[:-4] == kind.seed[:-4]
    # Unpriced: Japan and satellite phones, 2 % of the called numbers.
    unpriced = [k for k in DESTINATIONS if number_pool(k)[0].startswith(UNPRICED_PREFIXES)]
    assert {k.region for k in unpriced} == {"JP", "001"}
    assert abs(sum(k.weight for k in unpriced) / sum(k.weight for k in DESTINATIONS) - 0.02) < 1e-9


def test_raw_caller_ids_take_their_share_in_every_form() -> None:
    n = 6000
    sim = generate(cfg(calls=n, seed=21, raw_caller_ids=0.2))
    starts = [
        orjson.loads(m.value) for m in sim.messages if orjson.loads(m.value)["event"] == "start"
    ]
    raw = [s["source"] for s in starts if is_raw(s["source"])]
    assert len(raw) == sim.expected["raw_caller_ids"] == recount(sim.messages)["raw_caller_ids"]
    assert abs(len(raw) / n - 0.2) < 0.02
    forms = Counter("+" if r.startswith("+") else "00" if r.startswith("00") else r for r in raw)
    assert set(forms) == {"+", "00", "anonymous", "Restricted", "unknown"}
    assert min(forms.values()) > 0.02 * len(raw)
    numbers = [caller_digits(r) for r in raw if r[0] in "+0"]
    assert numbers and all(region_of(d) for d in numbers)
    # "00" is never put before an empty caller ID, nor "+": those become "anonymous".
    assert "+" not in raw and "00" not in raw


def test_ids_are_unique_per_call_and_tag_is_configurable() -> None:
    sim = generate(cfg(calls=200, id_tag=""))
    ids = {orjson.loads(m.value)["id"] for m in sim.messages}
    assert len(ids) == 200
    assert all(re.fullmatch(r"gw-[a-z]{3}\d-\d{9}", i) for i in ids)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.integers(0, 120),
    seed=st.integers(0, 2**32),
    fr=st.lists(st.sampled_from([0.0, 0.01, 0.1, 0.2, 0.3]), min_size=6, max_size=6),
)
def test_expected_is_ground_truth_for_any_mix(calls: int, seed: int, fr: list[float]) -> None:
    reorder, duplicate, late, orphan, never_ending, malformed = fr
    try:
        config = cfg(
            calls=calls,
            seed=seed,
            reorder=reorder,
            duplicate=duplicate,
            late=late,
            orphan=orphan,
            never_ending=never_ending,
            malformed=malformed,
        )
    except ValueError:  # rounding made the perturbations outnumber the complete calls
        assume(False)
    sim = generate(config)
    got = recount(sim.messages)
    for name, value in sim.expected.items():
        if name not in ("late_messages", "unknown_trunk"):
            assert got.get(name, 0) == value, name


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="distinct complete calls"):
        cfg(calls=10, reorder=0.5, duplicate=0.5, orphan=0.1)
    with pytest.raises(ValueError, match="exceed"):
        cfg(calls=10, orphan=0.6, never_ending=0.5)
    with pytest.raises(ValueError, match="within 0..1"):
        cfg(reorder=1.5)
    with pytest.raises(ValueError, match="timezone"):
        cfg(start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown outcomes"):
        cfg(outcome_mix=(("answered", 1.0), ("ringing", 1.0)))


def test_write_jsonl_round_trips(tmp_path: Path, mixed: simulate.Simulation) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(mixed.messages, path) == len(mixed.messages)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert data.split(b"\n")[:-1] == [m.value for m in mixed.messages]


class FakeBatch:
    """Stands in for aiokafka's BatchBuilder: refuses records past a byte budget."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.records = limit, 0, []
        self.closed = False

    def append(self, *, timestamp: float | None, key: bytes, value: bytes) -> object | None:
        if self.closed or self.size + len(value) > self.limit:
            self.closed = True
            return None
        self.records.append((key, value))
        self.size += len(value)
        return object()

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """Stands in for AIOKafkaProducer: 3 partitions per topic, acks a little later."""

    instances: list[FakeProducer] = []
    batch_limit = 8 * 1024  # small, so batches fill up and the oversize one goes alone

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.log: list[tuple[str, int | None, bytes, bytes]] = []
        self.futures: list[asyncio.Future[None]] = []
        self.started = self.stopped = False
        FakeProducer.instances.append(self)

    def _ack(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.001, fut.set_result, None)
        self.futures.append(fut)
        return fut

    async def start(self) -> None:
        self.started = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {2, 0, 1}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_limit)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        assert batch.records
        self.log += [(topic, partition, k, v) for k, v in batch.records]
        return self._ack()

    async def send(
        self, topic: str, value: bytes, key: bytes, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.log.append((topic, partition, key, value))
        return self._ack()

    async def flush(self) -> None:
        pass

    async def stop(self) -> None:
        assert all(f.done() for f in self.futures), "stopped before every ack"
        self.stopped = True


def test_produce_batches_by_key_partition_in_order_and_waits_for_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(simulate, "AIOKafkaProducer", FakeProducer)
    FakeProducer.instances.clear()
    msgs = generate(cfg(calls=600, seed=2, malformed=0.05, duplicate=0.05)).messages
    assert any(len(m.value) > FakeProducer.batch_limit for m in msgs)
    result = asyncio.run(produce(msgs, "127.0.0.1:9092", chunk=100))
    (p,) = FakeProducer.instances
    assert p.started and p.stopped
    assert p.kwargs["bootstrap_servers"] == "127.0.0.1:9092" and p.kwargs["acks"] == "all"
    assert result["messages"] == len(msgs) == len(p.log)
    assert result["by_topic"] == dict(Counter(m.topic for m in msgs))
    # Kafka's default partitioner: murmur2(key) over the sorted partitions.
    want = {(m.topic, murmur2(m.key) & 0x7FFFFFFF) for m in msgs}
    per_tp: dict[tuple[str, int | None], list[bytes]] = {}
    for topic, partition, key, value in p.log:
        assert (topic, partition) in {(t, h % 3) for t, h in want}
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 3
        per_tp.setdefault((topic, partition), []).append(value)
    for tp, values in per_tp.items():  # each partition keeps the emission order
        assert values == [
            m.value for m in msgs if (m.topic, (murmur2(m.key) & 0x7FFFFFFF) % 3) == tp
        ]


def test_produce_paces_at_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "AIOKafkaProducer", FakeProducer)
    FakeProducer.instances.clear()
    msgs = generate(cfg(calls=40)).messages[:100]
    result = asyncio.run(produce(msgs, "x:1", rate=1000.0))
    assert result["messages"] == 100 and result["elapsed_s"] >= 0.09
    (p,) = FakeProducer.instances
    assert [(t, k, v) for t, _, k, v in p.log] == [(m.topic, m.key, m.value) for m in msgs]


def test_main_writes_jsonl_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev.jsonl"
    argv = [
        "--calls",
        "60",
        "--seed",
        "4",
        "--config",
        str(CONFIG),
        "-o",
        str(out),
        "--start",
        "2026-11-01T06:00:00Z",
        "--malformed",
        "0.1",
        "--duplicate",
        "0.1",
    ]
    assert main(argv) == 0
    sim = generate(cfg(calls=60, seed=4, malformed=0.1, duplicate=0.1))
    assert out.read_bytes() == b"".join(m.value + b"\n" for m in sim.messages)
    printed = capsys.readouterr().out
    assert "expected: calls=60 " in printed and "malformed_messages=6" in printed
    assert main(["--calls", "5"]) == 2  # neither a file nor a broker


def test_build_parser_can_extend_a_subcommand() -> None:
    import argparse

    top = argparse.ArgumentParser(prog="cdrpipe")
    sub = top.add_subparsers(dest="cmd")
    build_parser(sub.add_parser("simulate"))
    args = top.parse_args(
        [
            "simulate",
            "--calls",
            "3",
            "--start",
            "2026-11-01T00:00:00",
            "--outcomes",
            "answered=1,failed=1",
            "--raw-caller-ids",
            "0.1",
            "-o",
            "-",
        ]
    )
    config = simulate.config_from_args(args)
    assert config.calls == 3 and config.start.tzinfo is UTC
    assert config.outcome_mix == (("answered", 1.0), ("failed", 1.0))
    assert config.raw_caller_ids == 0.1

"""Gateway traffic simulator: realistic SIP call events, with known trouble mixed in.

It exists so the pipeline can be tested and demonstrated end to end without real
switches: every message it emits follows SPEC section 1 exactly, and every kind of
trouble the pipeline must survive (reordering, duplicates, late events, orphans,
calls that never end, malformed messages) is injected in exact, seeded amounts and
reported in ``Simulation.expected`` so a test can check the pipeline's counters
against ground truth.

Output is deterministic for a ``SimConfig`` (same seed, same bytes). Events are
emitted in event-time order, as gateways would send them; perturbations then delay
single events. The same messages can be written as JSON Lines (``write_jsonl``) for
``cdrpipe replay`` or produced to Kafka (``produce``).

Run ``python -m pipeline.simulate --help`` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import random
import sys
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import accumulate
from math import log
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import phonenumbers
from aiokafka import AIOKafkaProducer
from phonenumbers import PhoneNumberType

from pipeline import config
from pipeline.core.partitioning import PRODUCER_PARTITIONERS
from pipeline.core.refdata import load_refdata
from pipeline.kafka.topics import TOPIC_CONNECT, TOPIC_END, TOPIC_START

__all__ = [
    "DEFAULT_OUTCOME_MIX",
    "DEFAULT_START",
    "DESTINATIONS",
    "MALFORMED_KINDS",
    "RAW_CALLER_IDS",
    "SOURCES",
    "TOPICS",
    "UNPRICED_DESTINATIONS",
    "NumberKind",
    "SimConfig",
    "SimMessage",
    "Simulation",
    "build_parser",
    "config_from_args",
    "generate",
    "iter_messages",
    "main",
    "number_pool",
    "produce",
    "run",
    "write_jsonl",
]

TOPICS: dict[str, str] = {"start": TOPIC_START, "connect": TOPIC_CONNECT, "end": TOPIC_END}

#: Fixed so that a bare ``SimConfig()`` is reproducible. Callers that store CDRs in a
#: store with a TTL (two months) should pass a recent ``start``; the CLI defaults to now.
DEFAULT_START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)

#: Final outcome of a call -> share. Codes per outcome are in ``_ENDINGS``.
DEFAULT_OUTCOME_MIX: tuple[tuple[str, float], ...] = (
    ("answered", 0.55),
    ("busy", 0.10),
    ("no-answer", 0.10),
    ("cancelled", 0.10),
    ("failed", 0.15),
)

#: Ways a malformed message is broken; cycled through in this order so that even a
#: handful of malformed messages covers many kinds. The tag of such a message is
#: ``"malformed:<kind>"``.
MALFORMED_KINDS: tuple[str, ...] = (
    "not_json",  # plain text / XML / binary-ish garbage
    "truncated",  # valid event JSON cut short
    "ts_number",  # "ts" is an epoch number instead of an RFC 3339 string
    "missing_field",  # a required field is absent
    "invalid_enum",  # event / direction / disconnect_initiator outside its enum
    "code_99",  # disconnect_code 99 (outside 100..699)
    "id_too_long",  # id longer than 128 chars
    "empty_id",  # id ""
    "oversize",  # well-formed JSON but over 64 KiB
    "invalid_utf8",  # bytes that are not UTF-8
    "nan_literal",  # disconnect_code NaN (not JSON)
    "naive_ts",  # ts without a UTC offset
    "not_object",  # JSON, but an array instead of an object
)

_US = 1_000_000  # microseconds per second
_MAX_ID = 128
_OVERSIZE_BYTES = 70_000  # > 64 KiB, well under Kafka's default 1 MiB message limit

# (reason, initiator, weight) per outcome; initiator None = either side.
_ENDINGS: dict[str, tuple[tuple[int, str, str | None, float], ...]] = {
    "answered": ((200, "Bye", None, 1.0),),
    "busy": ((486, "Busy Here", "destination", 0.8), (600, "Busy Everywhere", "destination", 0.2)),
    "no-answer": (
        (408, "Request Timeout", "destination", 0.4),
        (480, "Temporarily Unavailable", "destination", 0.6),
    ),
    "cancelled": ((487, "Request Terminated", "origination", 1.0),),
    "failed": (
        (503, "Service Unavailable", "destination", 0.30),
        (404, "Not Found", "destination", 0.18),
        (403, "Forbidden", "destination", 0.12),
        (500, "Server Internal Error", "destination", 0.10),
        (488, "Not Acceptable Here", "destination", 0.08),
        (484, "Address Incomplete", "destination", 0.07),
        (502, "Bad Gateway", "destination", 0.06),
        (402, "Payment Required", "destination", 0.04),
        # 487 ended by the far side is "failed", not "cancelled" (SPEC 3): an edge case.
        (487, "Request Terminated", "destination", 0.05),
    ),
}


class NumberKind(NamedTuple):
    """One kind of telephone number in simulated traffic, with its share of the draws.

    The numbers themselves come from `number_pool`: variations of ``seed`` (default:
    libphonenumber's example number of that region and network) that libphonenumber
    considers valid numbers of ``region`` and ``network``, so that the pipeline sees the
    country and network the simulator meant.
    """

    region: str  # ISO 3166-1 alpha-2, or "001" for a non-geographic calling code (+881)
    network: str  # "fixed" or "mobile"; NANP numbers are both ("Fixed or mobile")
    weight: float
    seed: str = ""  # E.164 digits (no "+") of a number to vary; "" = the example number


#: Destination prefixes the sample decks (deploy/config/rates.csv) leave unpriced on purpose,
#: so that simulated traffic shows what an unrated CDR is (flag ``no_rate``) and re-rating has
#: work to do: prefix -> what it is. ``expected["unpriced_destination"]`` counts such calls.
UNPRICED_DESTINATIONS: dict[str, str] = {
    "81": "Japan",
    "881": "satellite phones (Global Mobile Satellite System)",
}

#: Called numbers (outbound calls, and inbound calls forwarded to the PSTN). Every one is
#: priced in each sample deck except `UNPRICED_DESTINATIONS` (2 % of the draws).
DESTINATIONS: tuple[NumberKind, ...] = (
    NumberKind("US", "fixed", 0.09),  # New Jersey 201: the decks' 1201 row
    NumberKind("US", "fixed", 0.06, "12125550100"),  # New York
    NumberKind("US", "fixed", 0.05, "14155550100"),  # San Francisco
    NumberKind("CA", "fixed", 0.03, "14165550100"),  # Toronto
    NumberKind("CA", "fixed", 0.02, "16045550100"),  # Vancouver
    NumberKind("JM", "fixed", 0.01),
    NumberKind("JM", "mobile", 0.02),
    NumberKind("DO", "fixed", 0.015),
    NumberKind("PR", "fixed", 0.01),
    NumberKind("TT", "mobile", 0.01),
    NumberKind("BS", "mobile", 0.005),
    NumberKind("BB", "fixed", 0.005),
    NumberKind("KY", "mobile", 0.005),
    NumberKind("GB", "fixed", 0.12, "442079460123"),  # London
    NumberKind("GB", "mobile", 0.11),
    NumberKind("DE", "fixed", 0.11, "493012345678"),  # Berlin
    NumberKind("DE", "mobile", 0.08),  # 015x
    NumberKind("DE", "mobile", 0.02, "491701234567"),  # 017x
    NumberKind("FR", "fixed", 0.09, "33142685300"),  # Paris
    NumberKind("FR", "mobile", 0.06),  # 06
    NumberKind("FR", "mobile", 0.02, "33756789012"),  # 07
    NumberKind("AU", "fixed", 0.02),
    NumberKind("AU", "mobile", 0.02),
    NumberKind("JP", "fixed", 0.015),  # unpriced
    NumberKind("001", "mobile", 0.005, "881612345678"),  # Iridium, unpriced
)
#: Caller IDs as received (both directions); region "" = withheld (empty caller ID).
SOURCES: tuple[NumberKind, ...] = (
    NumberKind("US", "fixed", 0.14, "12125550100"),
    NumberKind("US", "fixed", 0.10, "13105550100"),  # Los Angeles
    NumberKind("CA", "fixed", 0.03, "14165550100"),
    NumberKind("JM", "mobile", 0.02),
    NumberKind("GB", "fixed", 0.14, "442079460123"),
    NumberKind("GB", "mobile", 0.08),
    NumberKind("DE", "fixed", 0.11, "493012345678"),
    NumberKind("DE", "mobile", 0.05),
    NumberKind("FR", "fixed", 0.11, "33142685300"),
    NumberKind("FR", "mobile", 0.05),
    NumberKind("JP", "fixed", 0.03),
    NumberKind("BR", "mobile", 0.02),  # Sao Paulo
    NumberKind("CH", "fixed", 0.02),  # Europe, not EEA
    NumberKind("AU", "mobile", 0.02),
    NumberKind("", "", 0.08),  # withheld: empty caller ID
)
#: How a caller ID looks when ``SimConfig.raw_caller_ids`` picks it: "{}" stands for the
#: E.164 digits (a withheld caller ID gets "anonymous" instead), the rest are as gateways
#: send a withheld one. The pipeline strips "+" / "00" and treats the words as withheld.
RAW_CALLER_IDS: tuple[tuple[str, float], ...] = (
    ("+{}", 0.45),
    ("00{}", 0.15),
    ("anonymous", 0.25),
    ("Restricted", 0.10),
    ("unknown", 0.05),
)
_POOL_SIZE = 100  # distinct valid numbers per NumberKind
_POOL_VARIED_DIGITS = 4  # trailing digits varied around the seed
_GATEWAYS = ("gw-fra1", "gw-lon1", "gw-nyc1", "gw-ams1", "gw-sjc1")
_INBOUND_TRUNKS = ("carrier-a-in", "carrier-b-in")
_UNKNOWN_TRUNKS = ("Outbound Trunk 99", "legacy-trunk-x")
# Timestamp precision per call: 0 = microseconds, 1 = milliseconds, 2 = whole seconds.
_PRECISION_CUM = tuple(accumulate((0.22, 0.70, 0.08)))
# UTC offset form per event: mostly Z / +00:00, some local offsets (same instant).
_OFFSETS: tuple[tuple[int, str, float], ...] = (
    (0, "Z", 0.55),
    (0, "+00:00", 0.30),
    (3600, "+01:00", 0.04),
    (7200, "+02:00", 0.04),
    (-18000, "-05:00", 0.03),
    (-28800, "-08:00", 0.02),
    (19800, "+05:30", 0.01),
    (32400, "+09:00", 0.01),
)


class SimMessage(NamedTuple):
    """One message as it goes on the wire (and, one per line, into a JSON Lines file).

    ``tag`` is bookkeeping for tests and summaries, never sent: ``""`` for a plain
    event, ``"duplicate"``, ``"late"``, ``"reordered"`` for the perturbed copy, or
    ``"malformed:<kind>"``.
    """

    topic: str
    key: bytes
    value: bytes
    tag: str = ""


@dataclass(slots=True)
class Simulation:
    """Messages in emission order, plus the ground truth a pipeline test checks against."""

    messages: list[SimMessage]
    expected: dict[str, int]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. Fractions are of ``calls`` and give exact (rounded) counts.

    Defaults model plain traffic: 70 % outbound, outcomes 55/10/10/10/15 % answered/
    busy/no-answer/cancelled/failed, answered durations lognormal with a 90 s median
    (capped at 2 h), 0.5 % of outbound calls on an unknown trunk, 2 % of called numbers
    unpriced (`UNPRICED_DESTINATIONS`), caller IDs as E.164 digits or empty, no trouble
    injected. ``raw_caller_ids`` sends that share of caller IDs as gateways also do:
    "+" or "00" before the digits, or "anonymous" / "Restricted" / "unknown" (`RAW_CALLER_IDS`).

    Call shapes are disjoint: ``orphan`` calls lose their start, ``never_ending`` calls
    lose their end, and the rest are complete. ``reorder``, ``duplicate`` and ``late``
    each perturb one event of a distinct complete call (so they must fit in the
    complete calls together). ``malformed`` adds that many invalid messages on top.
    """

    calls: int = 1000
    seed: int = 1
    config_dir: Path | str = field(default_factory=config.config_dir)
    start: datetime = DEFAULT_START
    call_rate: float = 50.0  # simulated call attempts per second (Poisson arrivals)
    outbound_share: float = 0.7
    outcome_mix: tuple[tuple[str, float], ...] = DEFAULT_OUTCOME_MIX
    unknown_trunk: float = 0.005  # outbound calls on a trunk not in trunks.csv
    raw_caller_ids: float = 0.0  # calls whose caller ID is not plain digits or empty
    median_duration: float = 90.0  # answered calls, seconds (lognormal)
    max_duration: float = 7200.0  # cap, well under the pipeline's 4 h timeout
    reorder: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0
    orphan: float = 0.0
    never_ending: float = 0.0
    malformed: float = 0.0
    id_tag: str | None = None  # ids are "<gateway>-<tag><counter>"; None = "s<seed>-"

    def __post_init__(self) -> None:
        if self.calls < 0:
            raise ValueError("calls must be >= 0")
        if self.call_rate <= 0:
            raise ValueError("call_rate must be > 0")
        for name in (
            "outbound_share",
            "unknown_trunk",
            "raw_caller_ids",
            "reorder",
            "duplicate",
            "late",
            "orphan",
            "never_ending",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.malformed < 0:
            raise ValueError("malformed must be >= 0")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        unknown = {name for name, _ in self.outcome_mix} - set(_ENDINGS)
        if unknown:
            raise ValueError(f"unknown outcomes {sorted(unknown)}; known: {sorted(_ENDINGS)}")
        if sum(w for _, w in self.outcome_mix) <= 0:
            raise ValueError("outcome_mix weights must add up to more than 0")
        if self.id_tag is not None and len(self.id_tag) > 100:
            raise ValueError("id_tag must be at most 100 characters (ids are <= 128)")
        if self.median_duration <= 0 or self.max_duration < 1:
            raise ValueError("median_duration must be > 0 and max_duration >= 1")
        n_orphan, n_never = self.count(self.orphan), self.count(self.never_ending)
        if n_orphan + n_never > self.calls:
            raise ValueError("orphan + never_ending exceed the number of calls")
        complete = self.calls - n_orphan - n_never
        perturbed = self.count(self.reorder) + self.count(self.duplicate) + self.count(self.late)
        if perturbed > complete:
            raise ValueError(
                f"reorder + duplicate + late need {perturbed} distinct complete calls, "
                f"only {complete} are complete (calls - orphan - never_ending)"
            )

    def count(self, fraction: float) -> int:
        """Exact number of calls (or malformed messages) a fraction stands for."""
        return round(fraction * self.calls)


# --------------------------------------------------------------------------- helpers


def _load_reference(
    config_dir: Path | str,
) -> tuple[list[tuple[str, str]], list[tuple[str, str, bool]]]:
    """(trunk, account) and (did, account, has a termination deck) from the reference data,
    read by the pipeline's own loader (so comments and every rule apply as in the pipeline)."""
    refdata = load_refdata(config_dir)
    trunks = [(t.name, t.account) for t in refdata.trunks.values()]
    dids = [(d.did, d.account, d.termination_deck is not None) for d in refdata.dids.values()]
    return trunks, dids


_NETWORK_TYPES: dict[str, tuple[int, ...]] = {
    "fixed": (PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE),
    "mobile": (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE),
}


def number_pool(kind: NumberKind) -> tuple[str, ...]:
    """Up to `_POOL_SIZE` distinct numbers (E.164 digits) of `kind`, sorted; ``("",)`` for a
    withheld caller ID.

    Built once per process and independent of the simulation's seed: libphonenumber costs
    tens of microseconds a number, too much per call, so calls draw from these pools. Each is
    the seed (or libphonenumber's example number) with its last digits varied, kept only if
    libphonenumber calls it a valid number of the kind's region and network.
    """
    return _pool(kind.region, kind.network, kind.seed)


@cache
def _pool(region: str, network: str, seed: str) -> tuple[str, ...]:
    if not region:
        return ("",)
    wanted = _NETWORK_TYPES[network]
    if not seed:
        example = phonenumbers.example_number_for_type(region, wanted[0])
        if example is None:
            raise ValueError(f"no example {network} number for {region!r}: give a seed")
        seed = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]

    def fits(digits: str) -> bool:
        number = phonenumbers.parse("+" + digits)
        return (
            phonenumbers.is_valid_number(number)
            and phonenumbers.region_code_for_number(number) == region
            and phonenumbers.number_type(number) in wanted
        )

    if not fits(seed):
        raise ValueError(f"{seed} is not a valid {network} number of {region}")
    rng = random.Random(f"pool:{seed}")  # a str seed: the same pool in every process
    stem, n = seed[:-_POOL_VARIED_DIGITS], _POOL_VARIED_DIGITS
    found = {seed}
    for _ in range(20 * _POOL_SIZE):
        if len(found) >= _POOL_SIZE:
            break
        digits = f"{stem}{rng.randrange(10**n):0{n}d}"
        if digits not in found and fits(digits):
            found.add(digits)
    return tuple(sorted(found))


def _pools(kinds: tuple[NumberKind, ...]) -> tuple[list[float], list[tuple[str, ...]]]:
    """Cumulative shares (for bisect) and the number pool of each kind."""
    return _cumulative(k.weight for k in kinds), [number_pool(k) for k in kinds]


def _cumulative(weights: Iterable[float]) -> list[float]:
    """Cumulative shares of `weights`, ending at 1, for ``bisect_right(shares, random())``."""
    cum = list(accumulate(weights))
    return [c / cum[-1] for c in cum]


class _Clock:
    """RFC 3339 formatting from integer microseconds, without datetime objects per event.

    A million events would spend seconds in ``datetime.isoformat``; here a day prefix
    is cached and the 86,400 ``HH:MM:SS`` strings are precomputed once.
    """

    _HMS: list[str] = []

    def __init__(self) -> None:
        if not _Clock._HMS:
            _Clock._HMS = [
                f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
            ]
        self._days: dict[int, str] = {}
        self._epoch = date(1970, 1, 1).toordinal()

    def fmt(self, us: int, precision: int, offset_s: int, suffix: str) -> str:
        secs, frac = divmod(us, _US)
        day, sod = divmod(secs + offset_s, 86400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = date.fromordinal(self._epoch + day).isoformat() + "T"
            self._days[day] = prefix
        hms = self._HMS[sod]
        if precision == 1:
            return f"{prefix}{hms}.{frac // 1000:03d}{suffix}"
        if precision == 0:
            return f"{prefix}{hms}.{frac:06d}{suffix}"
        return f"{prefix}{hms}{suffix}"


def _epoch_us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def _status(outcome: str, code: int, initiator: str) -> str:
    if outcome == "answered":
        return "answered"
    if code in (486, 600):
        return "busy"
    if code in (408, 480):
        return "no_answer"
    if code == 487 and initiator == "origination":
        return "cancelled"
    return "failed"


# ------------------------------------------------------------------------- generator


def iter_messages(cfg: SimConfig, expected: dict[str, int] | None = None) -> Iterator[SimMessage]:
    """Yield the simulation's messages in emission order, streaming.

    Memory stays bounded by the calls in flight (a heap keyed by emission time). If
    ``expected`` is given it is filled with the ground-truth counts once the iterator
    is exhausted (see ``generate`` for the keys).
    """
    rng = random.Random(cfg.seed)
    trunks, dids = _load_reference(cfg.config_dir)
    n = cfg.calls
    if n and cfg.outbound_share > 0 and not trunks:
        raise ValueError(f"{cfg.config_dir}/trunks.csv has no trunks for outbound calls")
    if n and cfg.outbound_share < 1 and not dids:
        raise ValueError(f"{cfg.config_dir}/dids.csv has no DIDs for inbound calls")

    # Exact, disjoint roles for the perturbed calls.
    n_orphan, n_never = cfg.count(cfg.orphan), cfg.count(cfg.never_ending)
    n_reorder, n_dup, n_late = cfg.count(cfg.reorder), cfg.count(cfg.duplicate), cfg.count(cfg.late)
    role = bytearray(n)  # 0 plain, 1 orphan, 2 never-ending, 3 reorder, 4 duplicate, 5 late
    picked = rng.sample(range(n), n_orphan + n_never)
    for i in picked[:n_orphan]:
        role[i] = 1
    for i in picked[n_orphan:]:
        role[i] = 2
    if n_reorder + n_dup + n_late:
        complete = [i for i in range(n) if role[i] == 0]
        picked = rng.sample(complete, n_reorder + n_dup + n_late)
        for i in picked[:n_reorder]:
            role[i] = 3
        for i in picked[n_reorder : n_reorder + n_dup]:
            role[i] = 4
        for i in picked[n_reorder + n_dup :]:
            role[i] = 5
    n_malformed = cfg.count(cfg.malformed)
    malformed_at: dict[int, list[str]] = {}
    if n and n_malformed:
        for j, i in enumerate(sorted(rng.choices(range(n), k=n_malformed))):
            malformed_at.setdefault(i, []).append(MALFORMED_KINDS[j % len(MALFORMED_KINDS)])

    dest_cum, dest_pools = _pools(DESTINATIONS)
    unpriced = [p[0].startswith(tuple(UNPRICED_DESTINATIONS)) for p in dest_pools]
    src_cum, src_pools = _pools(SOURCES)
    raw_share = cfg.raw_caller_ids
    raw_cum = _cumulative(w for _, w in RAW_CALLER_IDS)
    out_names = [name for name, _ in cfg.outcome_mix]
    out_cum = list(accumulate(w for _, w in cfg.outcome_mix))
    out_cum = [c / out_cum[-1] for c in out_cum]
    endings: dict[str, tuple[list[float], list[tuple[int, str, str | None]]]] = {}
    for name, table in _ENDINGS.items():
        cum = list(accumulate(w for *_, w in table))
        endings[name] = ([c / cum[-1] for c in cum], [(c, r, i) for c, r, i, _ in table])
    off_cum = _cumulative(w for *_, w in _OFFSETS)
    off_tab_full = [(o, s) for o, s, _ in _OFFSETS]
    known = [{"trunk": t, "account": a} for t, a in trunks]
    accounts = sorted({a for _, a in trunks}) or ["acc-unknown"]
    tag = f"s{cfg.seed}-" if cfg.id_tag is None else cfg.id_tag
    counters = dict.fromkeys(_GATEWAYS, 0)
    clock = _Clock()
    fmt = clock.fmt
    dumps = _dumps
    random_ = rng.random
    uniform = rng.uniform
    mu = log(cfg.median_duration)
    max_dur = cfg.max_duration

    def destination() -> tuple[str, bool]:
        """A called number and whether it is unpriced."""
        k = bisect_right(dest_cum, random_())
        pool = dest_pools[k]
        return pool[int(random_() * len(pool))], unpriced[k]

    def caller_id() -> tuple[str, bool]:
        """A caller ID as the gateway sends it, and whether it is in a raw form."""
        pool = src_pools[bisect_right(src_cum, random_())]
        digits = pool[int(random_() * len(pool))]
        if not raw_share or random_() >= raw_share:
            return digits, False
        form = RAW_CALLER_IDS[bisect_right(raw_cum, random_())][0]
        if "{}" not in form:
            return form, True
        return (form.format(digits) if digits else "anonymous"), True

    def stamp(us: int, precision: int) -> str:
        offset_s, suffix = off_tab_full[bisect_right(off_cum, random_())]
        return fmt(us, precision, offset_s, suffix)

    heap: list[tuple[int, int, SimMessage]] = []
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    stats = dict.fromkeys(
        (
            "inbound",
            "outbound",
            "answered",
            "busy",
            "no_answer",
            "cancelled",
            "failed",
            "orphan_messages",
            "reordered_calls",
            "unknown_trunk",
            "unpriced_destination",
            "raw_caller_ids",
            "messages",
        ),
        0,
    )
    t_us = _epoch_us(cfg.start)
    mean_gap_us = _US / cfg.call_rate
    step = 1000 if n > 1000 else 1

    for i in range(n):
        if i:
            t_us += int(rng.expovariate(1.0) * mean_gap_us)
        # Everything from here on is emitted at or after the floor of this call's start.
        if i % step == 0:
            watermark = t_us - _US
            while heap and heap[0][0] < watermark:
                yield pop(heap)[2]
                stats["messages"] += 1

        gw = _GATEWAYS[int(random_() * len(_GATEWAYS))]
        counters[gw] += 1
        call_id = f"{gw}-{tag}{counters[gw]:09d}"
        key = call_id.encode()
        precision = bisect_right(_PRECISION_CUM, random_())
        quantum = (1, 1000, _US)[min(precision, 2)]

        outbound = random_() < cfg.outbound_share
        start: dict[str, Any] = {"event": "start", "id": call_id, "ts": "", "gateway": gw}
        if outbound:
            start["direction"] = "outbound"
            if random_() < cfg.unknown_trunk:
                trunk = {
                    "trunk": _UNKNOWN_TRUNKS[int(random_() * 2)],
                    "account": accounts[int(random_() * len(accounts))],
                }
                unknown_trunk = True
            else:
                trunk = known[int(random_() * len(known))]
                unknown_trunk = False
            start["account"] = trunk["account"]
            start["source"], raw_cli = caller_id()
            start["destination"], no_price = destination()
            no_price = no_price and not unknown_trunk  # else there is no deck to look in
            start["trunk"] = trunk["trunk"]
        else:
            unknown_trunk = False
            did, account, terminates = dids[int(random_() * len(dids))]
            start["direction"] = "inbound"
            start["account"] = account
            start["source"], raw_cli = caller_id()
            # Only a DID with a termination deck is forwarded to the PSTN.
            r = random_() if terminates else 0.0
            no_price = False
            if r < 0.60:
                ext = 1000 + int(random_() * 200)
                start["destination"] = f"sip:{ext}@pbx.{account}.example.com"
            elif r < 0.92:
                start["destination"], no_price = destination()  # forwarded to the PSTN
            else:
                pstn, no_price = destination()
                start["destination"] = "tel:+" + pstn
            start["did"] = did
            if random_() < 0.5:
                start["trunk"] = _INBOUND_TRUNKS[int(random_() * 2)]

        outcome = out_names[bisect_right(out_cum, random_())]
        ecum, etab = endings[outcome]
        code, reason, initiator = etab[bisect_right(ecum, random_())]
        if initiator is None:
            initiator = "origination" if random_() < 0.5 else "destination"
        t_connect: int | None = None
        if outcome == "answered":
            t_connect = t_us + int(uniform(1.0, 30.0) * _US)
            dur = min(max(rng.lognormvariate(mu, 1.0), 1.0), max_dur)
            t_end = t_connect + int(dur * _US)
        elif outcome == "busy":
            t_end = t_us + int(uniform(0.3, 5.0) * _US)
        elif outcome == "no-answer":
            t_end = t_us + int(uniform(15.0, 60.0) * _US)
        elif outcome == "cancelled":
            t_end = t_us + int(uniform(1.0, 30.0) * _US)
        else:
            t_end = t_us + int(uniform(0.02, 3.0) * _US)

        # Quantise all of a call's instants the same way: floor keeps them in order.
        t_start = t_us - t_us % quantum
        t_end -= t_end % quantum
        start["ts"] = stamp(t_start, precision)
        end = {
            "event": "end",
            "id": call_id,
            "ts": stamp(t_end, precision),
            "disconnect_code": code,
            "disconnect_reason": reason,
            "disconnect_initiator": initiator,
        }
        # (emission key, event time, message); events listed in time order.
        events: list[list[Any]] = []
        r_role = role[i]
        if r_role != 1:
            events.append([t_start, t_start, SimMessage(TOPIC_START, key, dumps(start))])
        if t_connect is not None:
            t_connect -= t_connect % quantum
            connect = {"event": "connect", "id": call_id, "ts": stamp(t_connect, precision)}
            events.append([t_connect, t_connect, SimMessage(TOPIC_CONNECT, key, dumps(connect))])
        if r_role != 2:
            events.append([t_end, t_end, SimMessage(TOPIC_END, key, dumps(end))])

        if r_role == 1:
            stats["orphan_messages"] += len(events)
        else:
            stats[start["direction"]] += 1
            stats["unknown_trunk"] += unknown_trunk
            stats["unpriced_destination"] += no_price
            stats["raw_caller_ids"] += raw_cli
            if r_role != 2:
                stats[_status(outcome, code, initiator)] += 1
        if r_role == 3:
            # Hold back the start (or, for a short answered call, sometimes the connect)
            # until just after the next event of the same call: it arrives out of order.
            short = t_connect is not None and t_end - t_connect < 30 * _US
            k = 1 if short and random_() < 0.5 else 0
            events[k][0] = events[k + 1][1] + int(uniform(0.001, 3.0) * _US)
            events[k][2] = events[k][2]._replace(tag="reordered")
            stats["reordered_calls"] += 1
        elif r_role == 4:
            k = int(random_() * len(events))
            ev = events[k]
            events.append(
                [ev[0] + int(uniform(0.5, 60.0) * _US), ev[1], ev[2]._replace(tag="duplicate")]
            )
        elif r_role == 5:
            # The end, or for an answered call half the time the connect.
            k = 1 if len(events) == 3 and random_() < 0.5 else len(events) - 1
            ev = events[k]
            ev[0] += int(uniform(60.0, 1200.0) * _US)
            ev[2] = ev[2]._replace(tag="late")
            if k < len(events) - 1 and ev[0] > events[-1][0]:
                stats["reordered_calls"] += 1  # the connect now arrives after the end
        for ev in events:
            seq += 1
            push(heap, (ev[0], seq, ev[2]))

        for kind in malformed_at.get(i, ()):
            topic, value = _malformed(kind, rng, start, end, t_start)
            seq += 1
            push(
                heap,
                (
                    t_start + int(uniform(0.0, 2.0) * _US),
                    seq,
                    SimMessage(topic, _malformed_key(value, key, kind), value, f"malformed:{kind}"),
                ),
            )

    while heap:
        yield pop(heap)[2]
        stats["messages"] += 1

    if expected is not None:
        expected.clear()
        expected.update(
            calls=n,
            calls_with_start_and_end=n - n_orphan - n_never,
            never_ending=n_never,
            orphan_calls=n_orphan,
            orphan_messages=stats["orphan_messages"],
            malformed_messages=n_malformed,
            duplicate_messages=n_dup,
            late_messages=n_late,
            reordered_calls=stats["reordered_calls"],
            inbound=stats["inbound"],
            outbound=stats["outbound"],
            messages=stats["messages"],
            answered=stats["answered"],
            busy=stats["busy"],
            no_answer=stats["no_answer"],
            cancelled=stats["cancelled"],
            failed=stats["failed"],
            unknown_trunk=stats["unknown_trunk"],
            unpriced_destination=stats["unpriced_destination"],
            raw_caller_ids=stats["raw_caller_ids"],
        )


def _dumps(obj: Any) -> bytes:
    """orjson.dumps, copied into a right-sized object.

    orjson writes into a ~4 KiB buffer and shrinks it in place; kept by the million,
    each leaves a hole the allocator rarely reuses (4 GiB RSS for 1M events).
    """
    return bytes(memoryview(orjson.dumps(obj)))


def _malformed_key(value: bytes, call_key: bytes, kind: str) -> bytes:
    if kind == "id_too_long":
        return orjson.loads(value)["id"].encode()
    if kind == "empty_id":
        return b""
    return call_key


def _malformed(
    kind: str, rng: random.Random, start: dict[str, Any], end: dict[str, Any], t_start: int
) -> tuple[str, bytes]:
    """(topic, value) of one invalid message, built from a real call's events.

    Reusing a real call id makes the bad message collide with a good call, which is
    what a buggy gateway would do: the pipeline must dead-letter it without harming
    the call.
    """
    dumps = orjson.dumps
    base = start if rng.random() < 0.5 else end
    topic = TOPICS[base["event"]]
    if kind == "not_json":
        garbage = (
            b"this is not json",
            b'<event type="start"/>',
            b"\x00\x01\x02\x03 \x7f binary",
            b"event=start;id=" + start["id"].encode(),
        )
        return topic, garbage[int(rng.random() * len(garbage))]
    if kind == "truncated":
        full = dumps(base)
        return topic, full[: max(1, int(len(full) * rng.uniform(0.1, 0.9)))]
    if kind == "ts_number":
        return topic, dumps({**base, "ts": round(t_start / _US, 3)})
    if kind == "missing_field":
        if base is start:
            # Only fields SPEC makes unambiguously required (trunk: for outbound).
            options = ("account", "direction", "gateway", "ts", "id")
            if start["direction"] == "outbound":
                options += ("trunk",)
            drop = options[int(rng.random() * len(options))]
        else:
            drop = ("disconnect_code", "disconnect_reason", "disconnect_initiator", "ts", "id")[
                int(rng.random() * 5)
            ]
        return topic, dumps({k: v for k, v in base.items() if k != drop})
    if kind == "invalid_enum":
        if base is start:
            bad = {"direction": "sideways"} if rng.random() < 0.5 else {"event": "ringing"}
        else:
            bad = {"disconnect_initiator": "both"} if rng.random() < 0.5 else {"event": "hangup"}
        return topic, dumps({**base, **bad})
    if kind == "code_99":
        return TOPIC_END, dumps({**end, "disconnect_code": 99})
    if kind == "id_too_long":
        long_id = base["id"] + "-" + "x" * (_MAX_ID + int(rng.random() * 100) - len(base["id"]))
        return topic, dumps({**base, "id": long_id})
    if kind == "empty_id":
        return topic, dumps({**base, "id": ""})
    if kind == "oversize":
        return TOPIC_START, dumps({**start, "note": "x" * _OVERSIZE_BYTES})
    if kind == "invalid_utf8":
        gw = start["gateway"].encode()
        return TOPIC_START, dumps(start).replace(gw, gw + b"\xc3\x28\xff", 1)
    if kind == "nan_literal":
        return TOPIC_END, dumps({**end, "disconnect_code": 0}).replace(
            b'"disconnect_code":0', b'"disconnect_code":NaN', 1
        )
    if kind == "naive_ts":
        naive = datetime(1970, 1, 1) + timedelta(microseconds=t_start)
        return TOPIC_START, dumps({**start, "ts": naive.isoformat(timespec="milliseconds")})
    if kind == "not_object":
        return topic, dumps([base])
    raise ValueError(f"unknown malformed kind {kind!r}")


def generate(cfg: SimConfig) -> Simulation:
    """Generate the whole simulation in memory.

    ``expected`` holds the ground truth: ``calls`` (distinct call ids in valid
    messages), ``calls_with_start_and_end`` (will become CDRs the normal way),
    ``never_ending`` (start, maybe connect, no end: timed out by the pipeline),
    ``orphan_calls`` / ``orphan_messages`` (connect/end with no start ever),
    ``malformed_messages``, ``duplicate_messages`` (byte-identical re-sends),
    ``late_messages`` (connect/end delayed 1-20 min), ``reordered_calls`` (calls whose
    first copies arrive out of timestamp order: all ``reorder`` calls plus ``late``
    connects carried past their end), ``inbound`` / ``outbound`` (calls with a start,
    i.e. expected CDRs), ``messages`` (total), the statuses ``answered`` / ``busy`` /
    ``no_answer`` / ``cancelled`` / ``failed`` of calls with start and end, and
    ``unknown_trunk`` (outbound calls with a start, on a trunk missing from trunks.csv),
    ``unpriced_destination`` (calls with a start whose number to rate is one of
    `UNPRICED_DESTINATIONS`: outbound on a known trunk, or inbound forwarded to the PSTN)
    and ``raw_caller_ids`` (calls with a start whose caller ID is in a `RAW_CALLER_IDS` form).
    """
    expected: dict[str, int] = {}
    # A million small objects and no cycles: the cyclic GC would only rescan them
    # over and over (about a third of the run time).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        messages = list(iter_messages(cfg, expected))
    finally:
        if was_enabled:
            gc.enable()
    return Simulation(messages, expected)


def write_jsonl(messages: Iterable[SimMessage], path: Path | str) -> int:
    """Write one message value per line (``-`` = stdout); returns the number of lines."""
    count = 0
    if str(path) == "-":
        out = sys.stdout.buffer
        for m in messages:
            out.write(m.value + b"\n")
            count += 1
        out.flush()
        return count
    with open(path, "wb", buffering=1 << 20) as f:
        for m in messages:
            f.write(m.value)
            f.write(b"\n")
            count += 1
    return count


async def produce(
    messages: Iterable[SimMessage],
    bootstrap: str,
    *,
    rate: float | None = None,
    acks: int | str = "all",
    linger_ms: int = 5,
    chunk: int = 5000,
    client_id: str = "cdrpipe-simulate",
    partitioner: str | Mapping[str, str] = "murmur2",
) -> dict[str, Any]:
    """Send every message to its topic, keyed by call id, and wait for all acks.

    Partitions follow ``partitioner``, a name of `PRODUCER_PARTITIONERS` or one per topic:
    by default Kafka's Java partitioner (murmur2 of the key), so the three events of a
    call land on the same partition number of each topic; ``crc32`` is librdkafka's
    default, ``fnv1a`` Sarama's, ``random`` a producer that ignores the key. Without
    ``rate`` messages are packed into per-partition batches (``send_batch``): ~200k
    messages/s on a local broker, where one ``send()`` per message (per-message
    futures, pure-Python murmur2 every time) manages ~30k/s. With
    ``rate`` each message is sent on its own, paced to that many per second. Acks are
    awaited every ``chunk`` messages so memory stays flat, and all before returning.
    Returns ``{"messages", "by_topic", "elapsed_s", "rate"}``.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=acks,
        linger_ms=linger_ms,
        client_id=client_id,
        compression_type=None,
        max_batch_size=_BATCH_BYTES,
        max_request_size=1024 * 1024,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    by_topic: dict[str, int] = {}
    began = time.perf_counter()
    try:
        pick = _partitioners(partitioner)
        if rate is None:
            sent = await _send_batched(producer, messages, by_topic, chunk, pick, linger_ms)
        else:
            sent = await _send_paced(producer, messages, by_topic, rate, chunk, began, pick)
        await producer.flush()
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - began
    return {
        "messages": sent,
        "by_topic": by_topic,
        "elapsed_s": round(elapsed, 3),
        "rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
    }


_BATCH_BYTES = 256 * 1024
_Pick = Callable[[str, bytes, int], int]  # (topic, key, partition count) -> partition


def _partitioners(partitioner: str | Mapping[str, str]) -> _Pick:
    """``partitioner`` (one name, or a name per topic; murmur2 for a topic not named) as a
    function of topic, key and partition count."""
    names = {} if isinstance(partitioner, str) else dict(partitioner)
    default = partitioner if isinstance(partitioner, str) else "murmur2"
    unknown = {default, *names.values()} - set(PRODUCER_PARTITIONERS)
    if unknown:
        raise ValueError(f"unknown partitioners {sorted(unknown)}")
    by_topic = {t: PRODUCER_PARTITIONERS[n] for t, n in names.items()}
    fallback = PRODUCER_PARTITIONERS[default]

    def pick(topic: str, key: bytes, partitions: int) -> int:
        return by_topic.get(topic, fallback)(key, partitions)

    # The partition of a key can be remembered unless a producer ignores keys.
    pick.keyed = "random" not in {default, *names.values()}  # type: ignore[attr-defined]
    return pick


async def _send_paced(
    producer: AIOKafkaProducer,
    messages: Iterable[SimMessage],
    by_topic: dict[str, int],
    rate: float,
    chunk: int,
    began: float,
    pick: _Pick,
) -> int:
    sent = 0
    pending: list[Awaitable[Any]] = []
    counts: dict[str, int] = {}
    for m in messages:
        ahead = began + sent / rate - time.perf_counter()
        if ahead > 0:
            await asyncio.sleep(ahead)
        n = counts.get(m.topic)
        if n is None:
            n = counts[m.topic] = len(await producer.partitions_for(m.topic))
        partition = pick(m.topic, m.key, n)
        pending.append(await producer.send(m.topic, m.value, key=m.key, partition=partition))
        by_topic[m.topic] = by_topic.get(m.topic, 0) + 1
        sent += 1
        if len(pending) >= chunk:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sent


async def _send_batched(
    producer: AIOKafkaProducer,
    messages: Iterable[SimMessage],
    by_topic: dict[str, int],
    chunk: int,
    pick: _Pick,
    linger_ms: int,
) -> int:
    """Messages packed into a batch per topic-partition, each shipped when full or when it
    is `linger_ms` old, as Kafka clients do: shipped only when full, one topic's batch of a
    time span reached the broker up to a second before another's, which no gateway does."""
    partitions: dict[str, list[int]] = {}
    chosen: dict[tuple[str, bytes], int] = {}  # a call's events share a key: pick once
    batches: dict[tuple[str, int], Any] = {}
    pending: list[Awaitable[Any]] = []
    sent = 0
    due = time.monotonic() + linger_ms / 1000
    for m in messages:
        topic, key, value = m.topic, m.key, m.value
        parts = partitions.get(topic)
        if parts is None:
            parts = partitions[topic] = sorted(await producer.partitions_for(topic))
        tp = (topic, key)
        at = chosen.get(tp)
        if at is None:
            if len(chosen) > 200_000:
                chosen.clear()
            at = pick(topic, key, len(parts))
            if pick.keyed:  # type: ignore[attr-defined]
                chosen[tp] = at
        tp = (topic, parts[at])
        batch = batches.get(tp)
        if batch is None:
            batch = batches[tp] = producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:
            # Full: ship it and start a new one. A message bigger than a whole batch
            # goes on its own, after the batch, so the partition keeps its order.
            pending.append(await producer.send_batch(batch, topic, partition=tp[1]))
            batch = batches[tp] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value) is None:
                del batches[tp]
                pending.append(await producer.send(topic, value, key=key, partition=tp[1]))
        by_topic[topic] = by_topic.get(topic, 0) + 1
        sent += 1
        if sent & 255 == 0 and time.monotonic() >= due:
            for (topic, partition), batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
            batches.clear()
            due = time.monotonic() + linger_ms / 1000
        if sent % chunk == 0 and pending:
            await asyncio.gather(*pending)
            pending.clear()
    for (topic, partition), batch in batches.items():
        if batch.record_count():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*pending)
    return sent


# ------------------------------------------------------------------------------- CLI


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction within 0..1")
    return value


def _start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 datetime") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _partitioner(text: str) -> str | dict[str, str]:
    try:
        if "=" not in text:
            _partitioners(text)
            return text
        names = {
            f"sip.call.{k.strip()}": v.strip() for k, v in (p.split("=") for p in text.split(","))
        }
        _partitioners(names)
    except (ValueError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    return names


def _outcome_mix(text: str) -> tuple[tuple[str, float], ...]:
    try:
        pairs = tuple((k.strip(), float(v)) for k, v in (p.split("=") for p in text.split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected name=weight,name=weight,...") from exc
    unknown = {k for k, _ in pairs} - set(_ENDINGS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown outcomes {sorted(unknown)}")
    return pairs


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the simulator's options to ``parser`` (e.g. a ``cdrpipe simulate`` subparser).

    Pair with ``run(args)``. Without a parser, a standalone one is created.
    """
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m pipeline.simulate",
            description="Simulate SIP gateway call events (SPEC section 1) into a JSON Lines "
            "file and/or Kafka, with injected reordering, duplicates, late, orphan, "
            "never-ending and malformed messages.",
        )
    d = SimConfig()
    parser.add_argument("--calls", type=int, default=d.calls, help="call attempts (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    parser.add_argument(
        "--config",
        default=str(d.config_dir),
        help="reference data dir (rates.csv, trunks.csv, dids.csv) whose trunks and DIDs "
        "the calls use (default: $CDRPIPE_CONFIG, else the bundled samples)",
    )
    parser.add_argument("-o", "--output", help="JSON Lines file to write ('-' = stdout)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    parser.add_argument(
        "--rate", type=float, help="Kafka send rate in messages/s (default: as fast as possible)"
    )
    parser.add_argument(
        "--partitioner",
        type=_partitioner,
        default="murmur2",
        help="the gateways' Kafka partitioner: murmur2 (Java's, the default), crc32 "
        "(librdkafka's default), fnv1a (Sarama's) or random; or one per topic, e.g. "
        "start=crc32,connect=fnv1a,end=murmur2",
    )
    parser.add_argument(
        "--acks", default="all", choices=("all", "1", "0"), help="producer acks (%(default)s)"
    )
    parser.add_argument(
        "--start",
        type=_start,
        help="simulated time of the first call, ISO 8601 (default: now, UTC, to the minute)",
    )
    parser.add_argument(
        "--call-rate",
        type=float,
        default=d.call_rate,
        help="simulated call attempts per second of event time (%(default)s)",
    )
    parser.add_argument(
        "--outbound-share",
        type=_fraction,
        default=d.outbound_share,
        help="share of outbound calls (%(default)s)",
    )
    parser.add_argument(
        "--outcomes",
        type=_outcome_mix,
        default=d.outcome_mix,
        help="outcome weights, e.g. answered=0.55,busy=0.1,no-answer=0.1,"
        "cancelled=0.1,failed=0.15 (the default)",
    )
    parser.add_argument(
        "--raw-caller-ids",
        type=_fraction,
        default=d.raw_caller_ids,
        help="fraction of calls whose caller ID comes as '+' or '00' and digits, or as "
        "'anonymous', 'Restricted' or 'unknown' (%(default)s)",
    )
    parser.add_argument(
        "--id-tag",
        help="text between gateway and counter in call ids "
        "(default: s<seed>-; '' for ids like gw-fra1-000000001)",
    )
    for name, what in (
        ("reorder", "calls with one event held back behind a later one"),
        ("duplicate", "calls with one event re-sent (identical bytes)"),
        ("late", "calls with connect or end delayed 1-20 min of event time"),
        ("orphan", "calls without a start"),
        ("never-ending", "calls without an end"),
        ("malformed", "invalid extra messages, as a fraction of calls"),
    ):
        parser.add_argument(
            f"--{name}",
            type=float if name == "malformed" else _fraction,
            default=0.0,
            help=f"fraction: {what} (0)",
        )
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The ``SimConfig`` described by parsed command-line arguments."""
    start = args.start or datetime.now(UTC).replace(second=0, microsecond=0)
    return SimConfig(
        calls=args.calls,
        seed=args.seed,
        config_dir=Path(args.config),
        start=start,
        call_rate=args.call_rate,
        outbound_share=args.outbound_share,
        outcome_mix=tuple(args.outcomes),
        raw_caller_ids=args.raw_caller_ids,
        reorder=args.reorder,
        duplicate=args.duplicate,
        late=args.late,
        orphan=args.orphan,
        never_ending=args.never_ending,
        malformed=args.malformed,
        id_tag=args.id_tag,
    )


def run(args: argparse.Namespace) -> int:
    """Execute a parsed command line: write the file and/or produce, print a summary."""
    if not args.output and not args.bootstrap:
        print("simulate: give -o FILE and/or --bootstrap HOST:PORT", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        began = time.perf_counter()
        sim = generate(cfg)
    except (ValueError, OSError, KeyError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    gen_s = time.perf_counter() - began
    # With the events on stdout, the summary goes to stderr.
    out = sys.stderr if args.output == "-" else sys.stdout
    print(
        f"generated {len(sim.messages)} messages for {cfg.calls} calls in {gen_s:.2f} s "
        f"(seed {cfg.seed}, start {cfg.start.isoformat()})",
        file=out,
    )
    if args.output:
        lines = write_jsonl(sim.messages, args.output)
        print(f"wrote {lines} lines to {args.output}", file=out)
    if args.bootstrap:
        acks: int | str = args.acks if args.acks == "all" else int(args.acks)
        try:
            result = asyncio.run(
                produce(
                    sim.messages,
                    args.bootstrap,
                    rate=args.rate,
                    acks=acks,
                    partitioner=args.partitioner,
                )
            )
        except Exception as exc:  # any broker failure: report it plainly, exit 1
            print(f"simulate: producing to {args.bootstrap} failed: {exc!r}", file=sys.stderr)
            return 1
        print(
            f"produced {result['messages']} messages in {result['elapsed_s']} s "
            f"({result['rate']}/s): {result['by_topic']}",
            file=out,
        )
    print("expected: " + " ".join(f"{k}={v}" for k, v in sim.expected.items()), file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.simulate`` entry point; returns the exit code."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

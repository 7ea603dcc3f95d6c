"""The one processing step shared by offline replay and the streaming workers.

raw message bytes -> validation -> correlation -> CDR building with the
reference data in force at call start. Callers only move bytes in and carry
the outcome (CDRs, dead letters) out, so replay and streaming cannot drift.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.core.cdr import build_cdr
from pipeline.core.correlate import (
    CallState,
    Correlator,
    DeadlineIndex,
    Deadlines,
    Duplicate,
    Emit,
    make_held,
)
from pipeline.core.dead_letters import INVALID, DeadLetter
from pipeline.core.events import InvalidEvent, parse_event
from pipeline.core.model import CDR, Source, slot_constructor
from pipeline.core.partitioning import DEFAULT_PARTITIONS, CanonicalPartition
from pipeline.core.refdata import RefDataHolder


@dataclass(slots=True)
class Outcome:
    """What one step produced, for the caller to store or dead-letter. Read-only to callers:
    the steps that produce nothing (most events) all return the one empty `NOTHING`."""

    cdrs: list[CDR] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


_outcome = slot_constructor(Outcome)  # _outcome(cdrs, dead): Outcome(cdrs, dead), cheaper
NOTHING = Outcome()  # shared: tests/conftest.py checks after every test that it stays empty
_source = slot_constructor(Source)


class Engine:
    """Validates, correlates and rates; counts everything it sees.

    Counters: `events` (valid messages), `duplicates`, `dlq_invalid`,
    `dlq_orphan`, `dlq_late` (dead-lettered messages), `cdrs` (CDR versions
    emitted), `timeouts` (calls closed for want of an end, even if corrected later).
    `states` and `deadlines` are the `Correlator`'s (a dict and in-memory heaps by default).
    """

    def __init__(
        self,
        refdata: RefDataHolder,
        states: MutableMapping[str, CallState] | None = None,
        settings: Deadlines | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        deadlines: Callable[[int], DeadlineIndex] | None = None,
    ) -> None:
        self.refdata = refdata
        self.partitions = partitions
        self.correlator = Correlator(states if states is not None else {}, settings, deadlines)
        self.counters: Counter[str] = Counter()
        # call id -> its partition (`partition_for`), remembered: a call has several events
        self._partition_of = CanonicalPartition(partitions).of_id
        self.last_ts: datetime | None = None  # event time of the last valid message fed

    def feed(
        self,
        raw: bytes,
        source: Source,
        partition: int | None = None,
        *,
        now: datetime | None = None,
    ) -> Outcome:
        """Process one message as it came off the wire (or a line of a file).

        Without a `partition` (offline), the call goes to the partition Kafka's
        default partitioner would give its id among `self.partitions`.
        """
        return self._feed(raw, source.topic, source.offset, partition, source, now)

    def feed_line(
        self, raw: bytes, topic: str, offset: int, partition: int | None = None
    ) -> Outcome:
        """``feed(raw, Source(topic, 0, offset), partition)`` for offline replay, one `Source`
        cheaper; `partition`, if given, must be ``partition_for(id)`` of a valid event (a
        parallel replay's worker routed the line already)."""
        return self._feed(raw, topic, offset, partition, None, None)

    def _feed(
        self,
        raw: bytes,
        topic: str,
        offset: int,
        partition: int | None,
        source: Source | None,
        now: datetime | None,
    ) -> Outcome:
        try:
            event = parse_event(raw, now=now)
        except InvalidEvent as exc:
            self.counters["dlq_invalid"] += 1
            self.last_ts = None
            where = source if source is not None else _source(topic, 0, offset)
            return _outcome([], [DeadLetter(raw, where, exc.reason, INVALID)])
        self.counters["events"] += 1
        self.last_ts = event.ts
        if partition is None:
            partition = self._partition_of(event.id)
            source = None  # the message's own partition is not the call's
        if source is None:
            source = _source(topic, partition, offset)
        actions = self.correlator.process(make_held(event, raw, source), partition)
        if not actions:
            return NOTHING
        return self._carry(actions)

    def advance(
        self, partition: int, watermark: datetime, trigger: Source | None = None
    ) -> Outcome:
        """Move a partition's event time on (idle tick) and close what is due."""
        return self._carry(self.correlator.advance(partition, watermark, trigger))

    def upstream(
        self, partition: int, source: int, ts: datetime | None, trigger: Source | None = None
    ) -> Outcome:
        """Input partition `source` has been forwarded up to `ts`, or has nothing on its way
        (None) (`Correlator.upstream`)."""
        actions = self.correlator.upstream(partition, source, ts, self.partitions, trigger)
        return self._carry(actions) if actions else NOTHING

    def resend(self, states: list[CallState]) -> Outcome:
        """The outputs of settled states again (not counted twice), for a worker that may
        have lost them in a crash."""
        out = Outcome()
        for state in states:
            for action in self.correlator.outputs(state):
                if isinstance(action, Emit):
                    out.cdrs.append(self.build(action.state))
                elif isinstance(action, DeadLetter):
                    out.dead.append(action)
        return out

    def _carry(self, actions: list) -> Outcome:
        out = _outcome([], [])
        counters = self.counters
        for action in actions:
            kind = type(action)
            if kind is Duplicate:
                counters["duplicates"] += 1
            elif kind is Emit:
                out.cdrs.append(self.build(action.state))
                counters["cdrs"] += 1
                if action.state.timed_out_at is not None and action.state.end is None:
                    counters["timeouts"] += 1
            elif kind is DeadLetter:
                out.dead.append(action)
                counters[f"dlq_{action.kind}"] += 1
        return out

    def build(self, state: CallState) -> CDR:
        """The CDR of a complete call state, rated with the data in force at its start."""
        assert state.start is not None
        start = state.start.event
        return build_cdr(
            start,
            state.connect.event if state.connect else None,
            state.end.event if state.end else None,
            self.refdata.for_call(start.ts),
            timed_out_at=state.timed_out_at,
            revision=state.revision,
            bill_timed_out=self.correlator.settings.bill_timed_out,
        )

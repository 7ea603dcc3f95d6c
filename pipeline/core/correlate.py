"""Per-call correlation of start/connect/end events, on event time.

A call's state is the set of distinct events seen for it. The CDR is a pure
function of that set, so any order, any number of duplicates and any
interleaving of lateness give the same CDR (SPEC section 3). Of two different
events of the same kind, the one with the earliest timestamp (then the
smallest raw bytes) wins; the other is counted as a duplicate, so the choice
does not depend on arrival order either.

Deadlines run on a per-partition watermark. Kafka delivers the three input
topics independently, so one topic's partition can run far ahead of another's;
the watermark of a partition is therefore the *oldest* of the newest
timestamps seen per event kind (= per topic) on it, undefined until all three
were seen, and a call is only judged orphaned or timed out once every topic
has moved past its deadline. The streaming workers and the offline replay both route a
call to `partitioning.partition_for(call_id)`, the same function Kafka's default
partitioner uses, so both see the same watermark sequence per call and reach
the same decisions whatever the number of workers.

`Correlator` holds no I/O: it reads and writes states through a
`MutableMapping` (a dict offline, a Faust table when streaming, or a disk-backed
mapping such as `pipeline.state.rocks.RocksStates`) and returns `Action`s for the
caller to carry out (emit a CDR, dead-letter a message). Its per-partition deadline
index is an in-memory heap unless the caller gives a `DeadlineIndex` factory (a disk
store keeps it next to the states, so that memory does not grow with remembered calls).

Every state that produced output remembers the message whose processing
produced it (`trigger`), and an orphaned call stays as a tombstone until it
is forgotten: a streaming worker that crashed after its table write became
durable but before its output did can then tell, after recovery, which
outputs may be missing (`Correlator.outputs`) and send them again.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pipeline.core import dead_letters
from pipeline.core.dead_letters import DeadLetter
from pipeline.core.model import Event, Source, slot_constructor

DEFAULT_MAX_CALL_DURATION = timedelta(hours=4)
DEFAULT_ORPHAN_WAIT = timedelta(hours=1)
DEFAULT_MEMORY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Event-time deadlines (SPEC section 3), all configurable, and whether a call closed at
    the maximum call duration is billed up to it (default: stored unrated, for review)."""

    max_call_duration: timedelta = DEFAULT_MAX_CALL_DURATION
    orphan_wait: timedelta = DEFAULT_ORPHAN_WAIT
    memory: timedelta = DEFAULT_MEMORY
    bill_timed_out: bool = False


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An accepted event with the bytes it came in, kept for dead-lettering orphans."""

    event: Event
    raw: bytes
    source: Source

    def sort_key(self) -> tuple[datetime, bytes]:
        return (self.event.ts, self.raw)


@dataclass(frozen=True, slots=True)
class CallState:
    """Everything remembered about one call; immutable so table writes are explicit."""

    id: str
    start: HeldEvent | None = None
    connect: HeldEvent | None = None
    end: HeldEvent | None = None
    timed_out_at: datetime | None = None
    revision: int = 0  # CDR versions emitted so far
    orphaned_at: datetime | None = None  # dead-lettered as an orphan: a tombstone, no call
    trigger: Source | None = None  # the message whose processing produced the last output

    def held(self) -> list[HeldEvent]:
        return [h for h in (self.start, self.connect, self.end) if h is not None]

    @property
    def complete(self) -> bool:
        """A CDR exists for the call (ended, or closed as timed out)."""
        return self.start is not None and (self.end is not None or self.timed_out_at is not None)

    @property
    def settled(self) -> bool:
        """Nothing more is awaited: a CDR exists, or the call was dead-lettered as an orphan."""
        return self.complete or self.orphaned_at is not None

    def holds(self, held: HeldEvent) -> bool:
        """This very event (same timestamp and bytes) is part of the state."""
        current: HeldEvent | None = getattr(self, held.event.kind)
        return current is not None and current.sort_key() == held.sort_key()

    def last_ts(self) -> datetime:
        """The newest of the held events' times and `timed_out_at` (ValueError: none)."""
        last = self.timed_out_at
        for h in (self.start, self.connect, self.end):
            if h is not None and (last is None or h.event.ts > last):
                last = h.event.ts
        if last is None:
            raise ValueError(f"call {self.id} holds no event")
        return last

    def first_ts(self) -> datetime:
        """The oldest of the held events' times (ValueError: none)."""
        first = None
        for h in (self.start, self.connect, self.end):
            if h is not None and (first is None or h.event.ts < first):
                first = h.event.ts
        if first is None:
            raise ValueError(f"call {self.id} holds no event")
        return first

    def deadline(self, settings: Deadlines) -> tuple[datetime, DeadlineKind]:
        """When this call next needs attention on event time, and why."""
        if self.orphaned_at is not None:
            return self.orphaned_at + settings.memory, "forget"
        if self.start is None:
            return self.first_ts() + settings.orphan_wait, "orphan"
        if self.complete:
            return self.last_ts() + settings.memory, "forget"
        return self.start.event.ts + settings.max_call_duration, "timeout"


DeadlineKind = Literal["orphan", "timeout", "forget"]
_IDLE = datetime.max.replace(tzinfo=UTC)  # an upstream source forwarding nothing: no bound

#: ``CallState(*fields)`` and ``HeldEvent(event, raw, source)``, cheaper (see `slot_constructor`).
make_state: Callable[..., CallState] = slot_constructor(CallState)
make_held: Callable[[Event, bytes, Source], HeldEvent] = slot_constructor(HeldEvent)


@dataclass(frozen=True, slots=True)
class Emit:
    """A new or corrected CDR version must be built from `state` and stored."""

    state: CallState


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An event already represented in the call's state (counted, not stored)."""

    call_id: str


Action = Emit | DeadLetter | Duplicate


class DeadlineIndex(Protocol):
    """A partition's deadline entries kept outside the correlator (e.g. on disk).

    Entries are (due, call id) and leave in that order, ties on `due` by call id, as from
    the default in-memory heap; an entry may be stale (the state moved on since), the
    correlator checks each one against the state. Entries pushed twice may be kept once.
    """

    #: The earliest entry's due, None when empty; read for every event, so an attribute.
    due: datetime | None

    def push(self, due: datetime, call_id: str) -> None: ...

    def pop(self) -> str:
        """Remove the earliest entry; its call id."""
        ...


@dataclass(slots=True)
class EventClock:
    """How far event time has got on one partition: the newest timestamp seen per event kind
    (= per topic), its watermark their minimum once every kind was seen. Kafka delivers the
    topics independently, so the slowest one bounds what may be decided."""

    newest: dict[str, datetime] = field(default_factory=dict)  # per event kind (topic)
    watermark: datetime | None = None  # min(newest.values()), once every kind was seen

    def saw(self, kind: str, ts: datetime) -> None:
        newest = self.newest
        old = newest.get(kind)
        if old is None or ts > old:
            newest[kind] = ts
            if len(newest) == 3:
                self.settle()

    def raise_to(self, ts: datetime) -> None:
        """Every topic has (at least) reached `ts`."""
        for kind in ("start", "connect", "end"):
            if kind not in self.newest or self.newest[kind] < ts:
                self.newest[kind] = ts
        self.settle()

    def settle(self) -> None:
        self.watermark = min(self.newest.values()) if len(self.newest) == 3 else None


@dataclass(slots=True)
class _Partition(EventClock):
    # The deadline heap, unless `index` (a `DeadlineIndex`) holds the entries instead: the
    # default stays a list handled inline, the cheapest on the hot path.
    deadlines: list[tuple[datetime, str]] = field(default_factory=list)
    index: DeadlineIndex | None = None
    # Messages forwarded to this partition from others (`Correlator.upstream`): how far each
    # of the `sources` input partitions has got, and the oldest of them once every one has
    # told (None before). The watermark never passes it: deadlines wait for what is still on
    # its way.
    upstream: dict[int, datetime] | None = None
    sources: int = 0
    limit: datetime | None = None

    def settle(self) -> None:
        EventClock.settle(self)
        wm = self.watermark
        if wm is not None and self.upstream is not None:
            limit = self.limit
            self.watermark = None if limit is None else limit if limit < wm else wm


class Correlator:
    """Correlates events into call states and decides when CDRs are emitted.

    `states` maps call id -> CallState and is the only durable state; the
    deadline heaps are an index over it that `rebuild()` recreates. `deadlines`, if
    given, makes each partition's index (`DeadlineIndex`) instead of a heap in memory.

    Optional hooks of `states`, for stores that keep states encoded on disk (where reading
    one costs a decode): `open_count()` answers `open_calls()`; with a `deadlines` index,
    `settled_since(call_id)` is, for a settled state (a CDR exists, or dead-lettered as an
    orphan), the time its memory window runs from (`orphaned_at`, else `last_ts()`), and None
    for any other, so that a deadline entry of a settled call (its forget deadline, or a
    stale entry from while it was open) is checked without reading the state.
    """

    def __init__(
        self,
        states: MutableMapping[str, CallState],
        settings: Deadlines | None = None,
        deadlines: Callable[[int], DeadlineIndex] | None = None,
    ) -> None:
        self.states = states
        self.settings = settings or Deadlines()
        self.deadlines = deadlines
        self._partitions: dict[int, _Partition] = {}

    def _partition(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
            if self.deadlines is not None:
                part.index = self.deadlines(partition)
        return part

    def watermark(self, partition: int) -> datetime | None:
        part = self._partitions.get(partition)
        return part.watermark if part else None

    def clock(self, partition: int) -> dict[str, datetime]:
        """The newest event time seen per kind (topic) on a partition, its watermark being
        their minimum: what a store that outlives the process keeps with its states."""
        part = self._partitions.get(partition)
        return dict(part.newest) if part is not None else {}

    def set_clock(self, partition: int, newest: Mapping[str, datetime]) -> None:
        """Resume a partition's clock (`clock`) without reading its states (`rebuild` does)."""
        part = self._partition(partition)
        for kind, ts in newest.items():
            part.saw(kind, ts)

    def rebuild(self, partition: int, call_ids: list[str] | None = None) -> None:
        """Re-index deadlines of a partition's calls (after recovery or reassignment)."""
        part = self._partition(partition)
        index = part.index
        ids = call_ids if call_ids is not None else list(self.states.keys())
        for call_id in ids:
            state = self.states.get(call_id)
            if state is not None:
                due = state.deadline(self.settings)[0]
                if index is None:
                    part.deadlines.append((due, call_id))
                else:
                    index.push(due, call_id)
                for held in state.held():
                    part.saw(held.event.kind, held.event.ts)
        heapq.heapify(part.deadlines)

    def process(self, held: HeldEvent, partition: int) -> list[Action]:
        """Apply one valid event, then run the partition's deadlines up to its watermark."""
        part = self._partitions.get(partition)
        if part is None:
            part = self._partition(partition)
        event = held.event
        kind, ts = event.kind, event.ts
        state = self.states.get(event.id)
        if state is not None and state.orphaned_at is not None:  # a dead-lettered call
            if state.holds(held):
                actions: list[Action] = [Duplicate(event.id)]  # already dead-lettered
            elif kind == "start":
                actions = self._apply(None, held, part)  # the start, at last: a call anew
            else:  # more of an orphan: dead-lettered at once, and remembered with the rest
                if kind == "connect":
                    state = replace(state, connect=held, trigger=held.source)
                else:
                    state = replace(state, end=held, trigger=held.source)
                self.states[event.id] = state
                wait = self.settings.orphan_wait
                actions = [dead_letters.orphan(held.raw, held.source, event.id, wait)]
        else:
            actions = self._apply(state, held, part)
        # part.saw(kind, ts), inline
        newest = part.newest
        old = newest.get(kind)
        if old is None or ts > old:
            newest[kind] = ts
            if len(newest) == 3:
                if part.upstream is None:
                    part.watermark = min(newest.values())
                else:
                    part.settle()
        wm = part.watermark
        if wm is not None:
            index = part.index
            if index is None:
                heap = part.deadlines
                if heap and heap[0][0] <= wm:
                    actions.extend(self._expire(part, held.source))
            elif index.due is not None and index.due <= wm:
                actions.extend(self._expire(part, held.source))
        return actions

    def _apply(self, state: CallState | None, held: HeldEvent, part: _Partition) -> list[Action]:
        """Add the event to the call's state (of two events of a kind the earlier, then the
        smaller bytes, wins; the other is a duplicate), correct a timeout its end ends, emit a
        CDR version if the call is complete, store the state and index its deadline
        (`CallState.deadline`). One CallState per event."""
        event = held.event
        kind, ts, call_id = event.kind, event.ts, event.id
        settings = self.settings
        if state is None:
            wm = part.watermark
            if wm is not None and ts <= wm - settings.memory:
                memory = settings.memory
                return [dead_letters.late(held.raw, held.source, kind, call_id, ts, memory)]
            state_id = call_id
            start = connect = end = None
            timed_out_at = None
            revision = 0
            current = None
        else:
            state_id = state.id
            start, connect, end = state.start, state.connect, state.end
            timed_out_at, revision = state.timed_out_at, state.revision
            current = start if kind == "start" else connect if kind == "connect" else end
        if current is not None:
            # current.sort_key() <= held.sort_key(): the event changes nothing
            seen = current.event.ts
            if seen < ts or (seen == ts and current.raw <= held.raw):
                return [Duplicate(call_id)]
            actions: list[Action] = [Duplicate(call_id)]  # the one it displaces
        else:
            actions = []
        if kind == "start":
            start = held
        elif kind == "connect":
            connect = held
        else:
            end = held
        if end is not None and timed_out_at is not None:
            timed_out_at = None  # the real end corrects a timeout
        if start is not None and (end is not None or timed_out_at is not None):  # complete
            revision += 1
            new = make_state(
                state_id, start, connect, end, timed_out_at, revision, None, held.source
            )
            actions.append(Emit(new))
        else:
            new = make_state(state_id, start, connect, end, timed_out_at, revision, None, None)
            if start is not None and state is not None and state.start is start:
                # Open with the same start as the stored state, which was open too (a complete
                # state stays complete): the same timeout deadline, whose entry serves.
                self.states[call_id] = new
                return actions
        due = new.deadline(settings)[0]
        self.states[call_id] = new
        index = part.index
        if index is None:
            heapq.heappush(part.deadlines, (due, call_id))
        else:
            index.push(due, call_id)
        return actions

    def advance(
        self, partition: int, watermark: datetime, trigger: Source | None = None
    ) -> list[Action]:
        """Move a partition's event time forward without an event (idle wall-clock tick);
        `trigger` is the tick message, if it came as one."""
        part = self._partition(partition)
        part.raise_to(watermark)
        return self._expire(part, trigger)

    def expect_upstream(self, partition: int, sources: int) -> None:
        """Messages are forwarded to `partition` from the other input partitions (`sources`
        in all): from now on its deadlines wait until every source has told how far it got
        (`upstream`)."""
        part = self._partition(partition)
        if part.upstream is None:
            part.upstream = {}
            part.sources = sources
            part.limit = None
            part.settle()

    def upstream(
        self,
        partition: int,
        source: int,
        ts: datetime | None,
        sources: int,
        trigger: Source | None = None,
    ) -> list[Action]:
        """Every message read off input partition `source` (of `sources`) up to event time
        `ts` that belongs to `partition` has been forwarded to it; None: nothing of it is on
        its way. Once every source has told, the partition's watermark stays at or below the
        oldest of them, as a shuffle holds watermarks in Flink, so that no deadline fires
        while events of a call may still be on their way through the repartition topic;
        until then, from the first forwarded message or word on, no deadline fires at all.
        A source's time never goes back (a new owner re-reads from its last commit what was
        forwarded already)."""
        self.expect_upstream(partition, sources)
        part = self._partitions[partition]
        upstream = part.upstream
        assert upstream is not None
        old = upstream.get(source)
        new = _IDLE if ts is None else ts
        if old is not None and old is not _IDLE and new is not _IDLE and new <= old:
            return []
        upstream[source] = new
        part.limit = min(upstream.values()) if len(upstream) >= part.sources else None
        part.settle()
        return self._expire(part, trigger)

    def outputs(self, state: CallState) -> list[Action]:
        """The output a settled state stands for (its CDR, or its orphan dead letters),
        to send again when it may not have reached Kafka."""
        if state.orphaned_at is not None:
            wait = self.settings.orphan_wait
            return [dead_letters.orphan(h.raw, h.source, state.id, wait) for h in state.held()]
        if state.complete:
            return [Emit(state)]
        return []

    def _expire(self, part: _Partition, trigger: Source | None) -> list[Action]:
        actions: list[Action] = []
        wm = part.watermark
        if wm is None:
            return actions
        heap, index = part.deadlines, part.index
        # A store that keeps settled states encoded may tell when one is forgotten without
        # decoding it (`settled_since`): see `Correlator.__init__`.
        settled_since = None if index is None else getattr(self.states, "settled_since", None)
        memory = self.settings.memory
        while True:
            if index is None:
                if not heap or heap[0][0] > wm:
                    break
                call_id = heapq.heappop(heap)[1]
            else:
                if index.due is None or index.due > wm:
                    break
                call_id = index.pop()
                if settled_since is not None:
                    since = settled_since(call_id)
                    if since is not None:  # settled: CallState.deadline is since + memory
                        due = since + memory
                        if due > wm:
                            index.push(due, call_id)
                        else:
                            del self.states[call_id]
                        continue
            state = self.states.get(call_id)
            if state is None:
                continue
            due, kind = state.deadline(self.settings)
            if due > wm:  # stale entry: the state moved on
                if index is None:
                    heapq.heappush(heap, (due, call_id))
                else:
                    index.push(due, call_id)
                continue
            if kind == "forget":
                del self.states[call_id]
                continue
            if kind == "orphan":
                closed = replace(state, orphaned_at=due, trigger=trigger)
                actions.extend(self.outputs(closed))
            else:  # timeout
                assert state.start is not None
                closed = replace(
                    state,
                    timed_out_at=state.start.event.ts + self.settings.max_call_duration,
                    revision=state.revision + 1,
                    trigger=trigger,
                )
                actions.append(Emit(closed))
            self.states[call_id] = closed
            due = closed.deadline(self.settings)[0]
            if index is None:
                heapq.heappush(heap, (due, call_id))
            else:
                index.push(due, call_id)
        return actions

    def open_calls(self) -> int:
        """Calls still waiting for an event (neither complete nor dead-lettered). A store that
        keeps them apart answers itself (`open_count()`): a disk store is not read through."""
        open_count = getattr(self.states, "open_count", None)
        if open_count is not None:
            return int(open_count())
        return sum(1 for s in self.states.values() if not s.settled)

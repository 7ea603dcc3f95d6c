"""The end-to-end demo: local broker, workers and sink as real processes, simulated traffic.

It is also the process layout the integration tests and benchmarks use, so
`Pipeline` (start/stop the processes) lives here and is imported by them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline import config
from pipeline.core.numbers import describe
from pipeline.kafka.topics import CO_PARTITIONED, TOPIC_CDR, TOPIC_DLQ
from pipeline.store.client import TABLES
from pipeline.stream.progress import SINK_GROUP, WORKER_GROUP, end_offsets, wait_caught_up


@dataclass
class Pipeline:
    """Worker and sink processes of one pipeline, each with its own log file."""

    bootstrap: str
    store: str | None
    log_dir: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CDRPIPE_KAFKA": self.bootstrap, **self.env, **(env or {})}
        if self.store:
            env["CDRPIPE_STORE"] = self.store
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def start_worker(
        self, index: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self._spawn(f"worker{index}", "worker", "--name", f"worker{index}", env=env)

    def start_sink(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._spawn("sink", "sink", env=env)

    def start(self) -> None:
        self.start_sink()
        for i in range(self.workers):
            self.start_worker(i)

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            proc = self.procs[n]
            if proc.poll() is None:
                proc.send_signal(sig)
        for n in names:
            proc = self.procs.pop(n)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"pipeline processes exited: {dead}; see logs in {self.log_dir}")

    def wait_stored(self, *, timeout_s: float, settle_s: float = 3.0) -> dict[str, int]:
        """Wait until workers consumed every input and the sink stored every CDR record;
        raises as soon as one of the processes dies."""
        return asyncio.run(
            wait_caught_up(
                self.bootstrap,
                {WORKER_GROUP: CO_PARTITIONED, SINK_GROUP: (TOPIC_CDR,)},
                timeout_s=timeout_s,
                settle_s=settle_s,
                check=self.check_alive,
            )
        )


@dataclass(frozen=True, slots=True)
class UnratedReasons:
    """Why the stored CDRs of a time span are unrated, both directions together.

    A CDR can have more than one reason (a call on an unknown trunk that was also closed as
    timed out), so the reasons can add up to more than ``unrated``; ``unexplained`` counts
    unrated CDRs with none of them and should be 0. The lists are (name, CDRs), most first:
    destinations without a rate by country (or "+" and leading digits for a number without
    one), unknown trunks and DIDs by name.
    """

    cdrs: int
    unrated: int
    timed_out: int
    no_rate: int
    unknown_trunk: int
    unknown_did: int
    unexplained: int
    no_rate_destinations: tuple[tuple[str, int], ...]
    unknown_trunks: tuple[tuple[str, int], ...]
    unknown_dids: tuple[tuple[str, int], ...]


_DT = "DateTime64(6, 'UTC')"
_SPAN = f"start_time >= {{time_from:{_DT}}} AND start_time < {{time_to:{_DT}}}"


def _counts_sql(table: str) -> str:
    """Unrated CDRs by reason; a flag only counts on an unrated CDR."""
    return (
        "SELECT count(), countIf(NOT rated), countIf(NOT rated AND timed_out),"
        " countIf(NOT rated AND has(flags, 'no_rate')),"
        " countIf(NOT rated AND has(flags, 'unknown_trunk')),"
        " countIf(NOT rated AND has(flags, 'unknown_did')),"
        " countIf(NOT rated AND NOT timed_out"
        " AND NOT hasAny(flags, ['no_rate', 'unknown_trunk', 'unknown_did']))"
        f" FROM {table} FINAL WHERE {_SPAN}"
    )


def _no_rate_numbers_sql(table: str) -> str:
    """The PSTN numbers without a rate (an inbound one may be a tel: URI), grouped by their
    first four digits, which fix the country: +1 and an area code, or a country code."""
    return (
        "SELECT substring(number, 1, 4) AS head, any(number), count() AS n FROM"
        " (SELECT replaceRegexpOne(destination, '^(tel:)?([+]|00)?', '') AS number"
        f" FROM {table} FINAL WHERE {_SPAN} AND NOT rated AND has(flags, 'no_rate'))"
        " GROUP BY head ORDER BY n DESC, head LIMIT 100"
    )


def _by_name_sql(column: str, table: str) -> str:
    """Unrated CDRs carrying the flag given as parameter ``flag``, by `column`."""
    return (
        f"SELECT ifNull({column}, '') AS name, count() AS n FROM {table} FINAL"
        f" WHERE {_SPAN} AND NOT rated AND has(flags, {{flag:String}})"
        " GROUP BY name ORDER BY n DESC, name LIMIT 100"
    )


def unrated_reasons(client: Client, time_from: datetime, time_to: datetime) -> UnratedReasons:
    """Count the unrated CDRs that start in [time_from, time_to) by reason, from the stored
    ``rated``, ``timed_out`` and ``flags`` columns (each call once, in its newest version)."""
    params: dict[str, Any] = {"time_from": time_from, "time_to": time_to}

    def rows(sql: str, **extra: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in client.query(sql, parameters={**params, **extra}).result_rows]

    totals = [0] * 7
    destinations: dict[str, int] = {}
    for table in TABLES.values():
        (counts,) = rows(_counts_sql(table))
        totals = [t + int(c) for t, c in zip(totals, counts, strict=True)]
        for head, number, n in rows(_no_rate_numbers_sql(table)):
            name = describe(number).country_name or f"+{head}"
            destinations[name] = destinations.get(name, 0) + int(n)
    trunks = rows(_by_name_sql("trunk", TABLES["outbound"]), flag="unknown_trunk")
    dids = rows(_by_name_sql("did", TABLES["inbound"]), flag="unknown_did")
    cdrs, unrated, timed_out, no_rate, unknown_trunk, unknown_did, unexplained = totals
    return UnratedReasons(
        cdrs=cdrs,
        unrated=unrated,
        timed_out=timed_out,
        no_rate=no_rate,
        unknown_trunk=unknown_trunk,
        unknown_did=unknown_did,
        unexplained=unexplained,
        no_rate_destinations=_most_first(destinations.items()),
        unknown_trunks=_most_first((str(name), int(n)) for name, n in trunks),
        unknown_dids=_most_first((str(name), int(n)) for name, n in dids),
    )


def _most_first(pairs: Any) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(pairs, key=lambda p: (-p[1], p[0])))


def _top(pairs: tuple[tuple[str, int], ...], shown: int = 3) -> str:
    text = ", ".join(f"{name or '(none)'} {n}" for name, n in pairs[:shown])
    rest = len(pairs) - shown
    return f"{text}, {rest} more" if rest > 0 else text


def unrated_lines(reasons: UnratedReasons) -> list[str]:
    """The demo summary's lines on unrated CDRs: how many, and why."""
    r = reasons
    share = f" ({100 * r.unrated / r.cdrs:.1f} % of the CDRs)" if r.cdrs else ""
    lines = [f"  unrated              {r.unrated}{share}, why (a CDR may have two reasons):"]
    timed_out = f"    timed out          {r.timed_out}"
    if r.timed_out:
        timed_out += "  closed at the deadline; CDRPIPE_BILL_TIMED_OUT=1 bills them"
    lines.append(timed_out)
    for label, count, detail in (
        ("no rate", r.no_rate, r.no_rate_destinations),
        ("unknown trunk", r.unknown_trunk, r.unknown_trunks),
        ("unknown DID", r.unknown_did, r.unknown_dids),
    ):
        lines.append(f"    {label:<18} {count}" + (f"  {_top(detail)}" if detail else ""))
    if r.unexplained:
        lines.append(f"    no reason stored   {r.unexplained}")
    return lines


def run_demo(
    *, calls: int, workers: int, out_dir: Path, store: str | None, rate: float | None
) -> int:
    from pipeline.kafka.broker import LocalKafka
    from pipeline.kafka.topics import ensure_topics
    from pipeline.simulate import (
        UNPRICED_DESTINATIONS,
        SimConfig,
        generate,
        produce,
        write_jsonl,
    )
    from pipeline.store.client import connect
    from pipeline.store.export import write_csv
    from pipeline.store.queries import CdrFilter, totals

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    print("1/5 starting the local Kafka broker (first run fetches the jars with Maven)...")
    kafka = LocalKafka()
    kafka.start()
    ensure_topics(kafka.bootstrap, config.partitions())
    dlq_before = sum(asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_DLQ,))).values())

    print(f"2/5 starting {workers} worker(s) and the store sink...")
    # Short deadlines so that never-ending calls and orphans close within the demo.
    env = {"CDRPIPE_MAX_CALL_S": "120", "CDRPIPE_ORPHAN_WAIT_S": "30"}
    pipeline = Pipeline(kafka.bootstrap, store, out_dir / "logs", workers, env)
    pipeline.start()
    try:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        seed = int(time.time())
        cfg = SimConfig(
            calls=calls,
            seed=seed,
            config_dir=str(config.config_dir()),
            start=now,
            reorder=0.02,
            duplicate=0.02,
            late=0.01,
            orphan=0.005,
            never_ending=0.005,
            malformed=0.005,
            raw_caller_ids=0.02,
        )
        print(f"3/5 simulating {calls} calls (seed {seed}) into Kafka...")
        sim = generate(cfg)
        write_jsonl(sim.messages, out_dir / "events.jsonl")
        started = time.monotonic()
        sent = asyncio.run(produce(sim.messages, kafka.bootstrap, rate=rate))
        print(f"    produced {sent['messages']} messages in {sent['elapsed_s']:.1f}s")
        print("4/5 waiting until every CDR is stored...")
        lags = pipeline.wait_stored(timeout_s=600)
        elapsed = time.monotonic() - started
        pipeline.check_alive()
    finally:
        pipeline.stop()
    dlq = sum(asyncio.run(end_offsets(kafka.bootstrap, (TOPIC_DLQ,))).values()) - dlq_before

    print("5/5 summary and CSV exports")
    client = connect(store)
    span_from, span_to = now, now + timedelta(days=1)
    summary = {}
    for direction in ("outbound", "inbound"):
        flt = CdrFilter(direction=direction, time_from=span_from, time_to=span_to)
        summary[direction] = totals(client, flt)
        path = out_dir / f"cdrs-{direction}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            rows = write_csv(client, flt, out)
        print(f"    {path} ({rows} rows)")
    stored = sum(t.count for t in summary.values())
    exp = sim.expected
    print()
    print(
        f"calls simulated        {exp['calls']} ({exp['outbound']} outbound, "
        f"{exp['inbound']} inbound with a start)"
    )
    print(f"messages produced      {sent['messages']}")
    with_start = exp["outbound"] + exp["inbound"]
    print(
        f"CDRs stored            {stored} of {with_start} calls with a start "
        f"({with_start - stored} still open: never-ending calls before their deadline)"
    )
    for line in unrated_lines(unrated_reasons(client, span_from, span_to)):
        print(line)
    unpriced = "; ".join(UNPRICED_DESTINATIONS.values())
    print(
        f"    on purpose, the simulation has {exp['unpriced_destination']} calls to destinations"
        f" the sample decks leave unpriced ({unpriced}), {exp['unknown_trunk']} on unknown"
        f" trunks and {exp['never_ending']} that never end"
    )
    print(f"  timed out            {sum(t.timed_out for t in summary.values())}")
    mismatched = sum(t.account_mismatch for t in summary.values())
    print(f"  account mismatch     {mismatched} (stored under the trunk's or DID's owner)")
    print(
        f"dead-lettered          {dlq} (injected: malformed {exp['malformed_messages']}, "
        f"orphan messages {exp['orphan_messages']}; orphans go once their wait has passed)"
    )
    print(
        f"throughput             {sent['messages'] / elapsed:,.0f} events/s end to end "
        f"({elapsed:.1f}s until stored; lag {lags})"
    )
    print(f"logs                   {pipeline.log_dir}")
    print("the broker keeps running: `cdrpipe kafka stop` stops it")
    return 0

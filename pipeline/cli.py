"""`cdrpipe` command line: thin wiring of the core, the store and the services."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import config
from pipeline.private_files import keep_files_private


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=None,
        help="ClickHouse DSN (default: $CDRPIPE_STORE, else the embedded chDB store in ./data)",
    )


def _add_metrics(p: argparse.ArgumentParser, setting: str) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=getattr(config.environment(), setting),
        help=f"serve Prometheus /metrics on 127.0.0.1:PORT (default $CDRPIPE_{setting.upper()},"
        " else off)",
    )


def _jobs(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="reference data directory (default: $CDRPIPE_CONFIG, else the bundled samples)",
    )


def cmd_replay(args: argparse.Namespace) -> int:
    import orjson

    from pipeline.core.refdata import RefDataError, RefDataHolder
    from pipeline.replay import choose_state_dir, replay_file
    from pipeline.store.client import connect
    from pipeline.store.writer import CdrWriter

    try:
        refdata = RefDataHolder(args.config or config.config_dir())
    except RefDataError as exc:
        print(f"reference data refused: {exc}", file=sys.stderr)
        return 2
    client = connect(args.store)
    writer = CdrWriter(client)
    dlq = args.dlq.open("wb") if args.dlq else None

    def dead_letter(line: int, dead) -> None:
        if dlq is not None:
            record = {
                "line": line,
                "kind": dead.kind,
                "reason": dead.reason,
                "raw": dead.raw.decode("utf-8", "backslashreplace"),
            }
            dlq.write(orjson.dumps(record) + b"\n")

    try:
        summary = replay_file(
            args.events,
            refdata,
            writer,  # a RowSink: with --jobs, workers hand it rows of its tables
            settings=config.deadlines(),
            partitions=args.partitions,
            dead_letter=dead_letter,
            jobs=args.jobs,
            state_dir=choose_state_dir(args.events, args.state, args.state_dir),
        )
    finally:
        client.close()
        if dlq is not None:
            dlq.close()
    for number, reason in summary.bad_lines[: args.show_bad]:
        print(f"{args.events}:{number}: {reason}", file=sys.stderr)
    if len(summary.bad_lines) > args.show_bad:
        print(f"... and {len(summary.bad_lines) - args.show_bad} more bad lines", file=sys.stderr)
    print(summary.render())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.store.client import connect
    from pipeline.store.export import write_csv
    from pipeline.store.queries import CdrFilter

    try:
        flt = CdrFilter.from_strings(
            direction=args.direction,
            time_from=args.time_from,
            time_to=args.time_to,
            account=args.account,
            source=args.source,
            destination=args.destination,
            cdr_type=args.type,
            status=args.status,
            flag=args.flag,
        )
    except ValueError as exc:
        print(f"cdrpipe export: {exc}", file=sys.stderr)
        return 2
    client = connect(args.store)
    try:
        if args.output:
            with open(args.output, "w", newline="", encoding="utf-8") as out:
                rows = write_csv(client, flt, out, excel=args.excel)
            print(f"{rows} rows written to {args.output}", file=sys.stderr)
        else:
            # UTF-8 whatever the locale, and line ends exactly as written (no translation)
            if isinstance(sys.stdout, io.TextIOWrapper):
                sys.stdout.reconfigure(encoding="utf-8", newline="")
            write_csv(client, flt, sys.stdout, excel=args.excel)
    except BrokenPipeError:  # `cdrpipe export ... | head` is fine
        sys.stderr.close()
    finally:
        client.close()
    return 0


WORKER_HELP = "run a correlation worker (events -> cdr.records)"


def _add_worker(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("batch", "faust"),
        default=config.worker_engine(),
        help="batch: aiokafka consumer group, one batch per cycle (fast, the default); "
        "faust: the Faust agent and table (default $CDRPIPE_WORKER_ENGINE or batch)",
    )
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default $CDRPIPE_KAFKA)")
    p.add_argument("--name", default="worker", help="worker name (its local data folder)")
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument(
        "--state",
        choices=("disk", "memory"),
        default=config.worker_state(),
        help="batch engine: call states in local RocksDB stores under $CDRPIPE_DATA/<name> "
        "(disk, the default: bounded memory, restarts read only the changelog's tail) or in "
        "memory (default $CDRPIPE_WORKER_STATE or disk)",
    )
    p.add_argument(
        "--idle-after",
        type=float,
        default=config.idle_after(),
        help="seconds without events before a partition's clock follows wall time "
        "(default $CDRPIPE_IDLE_AFTER_S or 5)",
    )
    p.add_argument(
        "--web-port", type=int, default=None, help="faust engine: enable Faust's web on 127.0.0.1"
    )
    _add_metrics(p, "metrics_port")
    p.set_defaults(func=cmd_worker)


def worker_parser() -> argparse.ArgumentParser:
    """`cdrpipe worker` on its own: the full parser imports every other command's module
    (simulator, store client, API, chaos suite), a third of a second on each worker
    (re)start (tests/unit/test_startup.py)."""
    p = argparse.ArgumentParser(prog="cdrpipe worker", description=WORKER_HELP)
    _add_worker(p)
    return p


def cmd_worker(args: argparse.Namespace) -> int:
    common = {
        "bootstrap": args.bootstrap,
        "partitions": args.partitions,
        "idle_after": args.idle_after,
        "metrics_port": args.metrics_port,
    }
    if args.engine == "faust":
        from pipeline.stream.faust_engine import run_worker

        run_worker(name=args.name, web_port=args.web_port, **common)
    else:
        from pipeline.stream.batch import run_batch_worker

        state_dir = config.data_dir() / args.name if args.state == "disk" else None
        run_batch_worker(state_dir=state_dir, **common)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from pipeline.logs import configure_logging
    from pipeline.stream.sink import run_sink

    configure_logging()
    stats = run_sink(
        args.store,
        metrics_port=args.metrics_port,
        bootstrap=args.bootstrap,
        batch_size=args.batch_size,
        max_wait_s=args.max_wait,
    )
    print(f"sink stopped: {stats.rows_written} rows in {stats.batches} batches", file=sys.stderr)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from pipeline.kafka.topics import TopicError, ensure_topics

    bootstrap = args.bootstrap or config.kafka_bootstrap()
    try:
        counts = ensure_topics(bootstrap, args.partitions)
    except (TopicError, KafkaError, OSError, ValueError) as exc:
        print(f"cdrpipe topics: {bootstrap}: {exc}", file=sys.stderr)
        return 1
    for topic, count in counts.items():
        print(f"{topic}\t{count} partitions")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(
        calls=args.calls,
        workers=args.workers,
        out_dir=args.out,
        store=args.store,
        rate=args.rate,
    )


def cmd_chaos(args: argparse.Namespace) -> int:
    from pipeline.chaos import main as chaos_main

    return chaos_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdrpipe", description="SIP call events -> rated CDRs in ClickHouse"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="correlate and rate a JSON Lines file of events offline")
    p.add_argument("events", type=Path, help="JSON Lines file of start/connect/end events")
    _add_config(p)
    _add_store(p)
    p.add_argument(
        "--partitions",
        type=int,
        default=config.partitions(),
        help="route calls like a topic with this many partitions (default 8)",
    )
    p.add_argument("--dlq", type=Path, help="write dead-lettered lines (JSON Lines) here")
    p.add_argument("--show-bad", type=int, default=20, help="bad lines to list (default 20)")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        help="worker processes, each owning whole partitions; same outcome as 1 "
        "(default 1: this process; 0: one per CPU)",
    )
    p.add_argument(
        "--state",
        choices=("auto", "memory", "disk"),
        default="auto",
        help="where call states are kept: memory (fastest; ~2.3 KB a call remembered), disk "
        "(a temporary RocksDB, removed at the end; memory bounded by the calls in progress) "
        "or auto (default): disk for files over 256 MiB or with --state-dir; same outcome",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="directory for the temporary state store (default $CDRPIPE_DATA/replay-state)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("export", help="export CDRs as CSV in the Call Logs layouts")
    p.add_argument("--direction", required=True, choices=["inbound", "outbound"])
    p.add_argument("--from", dest="time_from", help="start time from (inclusive), UTC")
    p.add_argument("--to", dest="time_to", help="start time to (exclusive), UTC")
    p.add_argument("--account")
    p.add_argument("--source", help="source number prefix")
    p.add_argument("--destination", help="destination number prefix")
    p.add_argument("--type", help="CDR type: International, Local or 'Origin based'")
    p.add_argument("--status", help="answered, busy, no-answer, cancelled or failed")
    p.add_argument(
        "--flag",
        help="only CDRs with this flag: account_mismatch, unknown_trunk, unknown_did or no_rate",
    )
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument(
        "--excel",
        action="store_true",
        help="for spreadsheets: a UTF-8 byte order mark first and CRLF line ends "
        "(default: plain UTF-8, LF)",
    )
    _add_store(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("worker", help=WORKER_HELP)
    _add_worker(p)

    p = sub.add_parser("sink", help="run the store sink (cdr.records -> ClickHouse)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default $CDRPIPE_KAFKA)")
    p.add_argument("--batch-size", type=int, default=20_000, help="max CDRs per insert")
    p.add_argument("--max-wait", type=float, default=1.0, help="max seconds a batch waits")
    _add_metrics(p, "sink_metrics_port")
    _add_store(p)
    p.set_defaults(func=cmd_sink)

    # `cdrpipe kafka ...` is handed to the broker's own parser by main() before parsing.
    sub.add_parser(
        "kafka", help="local Kafka broker: install|start|stop|restart|status|topics", add_help=False
    )

    from pipeline.simulate import build_parser as simulate_parser
    from pipeline.simulate import run as simulate_run

    p = sub.add_parser("simulate", help="gateway traffic simulator (JSON Lines and/or Kafka)")
    simulate_parser(p)
    p.set_defaults(func=simulate_run)

    p = sub.add_parser("topics", help="create the pipeline topics on a broker (idempotent)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default $CDRPIPE_KAFKA)")
    p.add_argument("--partitions", type=int, default=config.partitions())
    p.set_defaults(func=cmd_topics)

    from pipeline.rerate import add_rerate_parser

    add_rerate_parser(sub)

    from pipeline.api.cli import add_keys_parser, add_serve_parser

    add_serve_parser(sub)
    add_keys_parser(sub)

    p = sub.add_parser("demo", help="broker + workers + sink + simulated traffic, then export")
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rate", type=float, default=None, help="messages/s (default: max)")
    p.add_argument("--out", type=Path, default=Path("out"), help="where CSVs and logs go")
    _add_store(p)
    p.set_defaults(func=cmd_demo)

    from pipeline.chaos import build_parser as chaos_parser

    p = sub.add_parser(
        "chaos", help="reliability suite: kills, broker restart, store outage; checks vs replay"
    )
    chaos_parser(p)
    p.set_defaults(func=cmd_chaos)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Every command writes call data (stores, state, exports, event files, a broker's logs):
    # readable by this user only.
    keep_files_private()
    if argv[:1] == ["kafka"]:
        from pipeline.kafka.broker import main as kafka_main

        return kafka_main(argv[1:])
    if argv[:1] == ["worker"]:
        return cmd_worker(worker_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

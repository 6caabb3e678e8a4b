"""`flowdeck db`: the database's schema (upgrade), its size (stats) and space (vacuum)."""

from __future__ import annotations

from datetime import UTC, datetime

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE, CliError
from flowdeck.console.state import fmt_bytes


def add_parsers(sub) -> None:
    p = sub.add_parser("db", help="database schema, size and space")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    q = dbsub.add_parser("upgrade", help="apply Alembic migrations")
    q.add_argument("--db", metavar="URL")
    q.set_defaults(fn=cmd_db_upgrade)
    q = dbsub.add_parser("stats", help="size, rows and oldest time per table, last retention pass")
    common.add_common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_db_stats)
    q = dbsub.add_parser("vacuum", help="SQLite: switch to incremental auto-vacuum and rewrite "
                                        "the file (stop the daemon first)")
    common.add_common(q)
    q.set_defaults(fn=cmd_db_vacuum)


def cmd_db_upgrade(args) -> int:
    from flowdeck.storage.db import StoreError, make_engine, resolve_url, upgrade

    url = resolve_url(args.db)
    try:
        engine = make_engine(url)
        before, after = upgrade(engine)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    print(f"schema {before or 'empty'} -> {after}" if before != after else f"schema at {after}")
    engine.dispose()
    return EXIT_OK


def _open(args):
    config = common.config(args) if getattr(args, "config", None) else None
    return common.store(args, config, create=False)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_db_stats(args) -> int:
    from flowdeck.storage.retention import Retention, last_pass

    store = _open(args)
    try:
        stats = Retention(store).stats()
        last = last_pass(store)
    finally:
        store.close()
    stats["last_pass"] = ({"ts_ms": last["ts_ms"], "reason": last["reason"],
                           "outcome": last["outcome"], "detail": last["detail"]}
                          if last else None)
    if args.json:
        common.print_json(stats)
        return EXIT_OK
    extra = f", auto_vacuum {stats['auto_vacuum']}" if "auto_vacuum" in stats else ""
    print(f"{stats['backend']} database, {fmt_bytes(stats['size_bytes'])}{extra}")
    print(f"{'table':<18} {'rows':>10}  oldest")
    for name, t in stats["tables"].items():
        print(f"{name:<18} {t['rows']:>10}  {_when(t['oldest_ms'])}")
    if last:
        print(f"last retention pass: {_when(last['ts_ms'])} {last['outcome']}: {last['reason']}")
    else:
        print("last retention pass: none recorded (nothing deleted yet)")
    return EXIT_OK


def cmd_db_vacuum(args) -> int:
    from flowdeck.storage.retention import Retention

    store = _open(args)
    try:
        try:
            out = Retention(store).full_vacuum()
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        store.close()
    print(f"auto_vacuum {out['mode']}: {fmt_bytes(out['bytes_before'])} -> "
          f"{fmt_bytes(out['bytes_after'])}")
    return EXIT_OK

"""`flowdeck db upgrade`: bring the database schema to the current Alembic revision."""

from __future__ import annotations

from flowdeck.console.cli.common import EXIT_OK, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    q = dbsub.add_parser("upgrade", help="apply Alembic migrations")
    q.add_argument("--db", metavar="URL")
    q.set_defaults(fn=cmd_db_upgrade)


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

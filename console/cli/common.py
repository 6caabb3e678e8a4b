"""What every command module of the `flowdeck` command line shares: exit codes, the
one-line error, the config / store / flow lookups and the common options.

Light on purpose: it imports the config loader and nothing of the engine, the store or
the console at module level, so any command can use it without loading more than it runs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from flowdeck.pipeline.config import BUNDLED_CONFIG, Config, load_config

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def config(args, *, from_store: bool = False) -> Config:
    """The config named by --config (else $FLOWDECK_CONFIG, else the bundled demo).

    ``from_store`` (commands that read a store): with no config named and a database named
    (--db or $FLOWDECK_DB), the flows are that database's own, as its pipeline versions
    recorded them, not the bundled demo's."""
    named = getattr(args, "config", None) or os.environ.get("FLOWDECK_CONFIG")
    db = getattr(args, "db", None) or os.environ.get("FLOWDECK_DB")
    if from_store and not named and db:
        return store_config(args)
    return load_config(named)


def store_config(args) -> Config:
    """A config of the flows the database at --db holds (their newest pipeline version)."""
    from pydantic import ValidationError

    s = store(args, create=False)
    try:
        flows = s.flow_configs()
    finally:
        s.close()
    if not flows:
        raise CliError("the database holds no flows yet (run the daemon on it, or pass "
                       "--config)", EXIT_USAGE)
    # The bundled demo's flows are the bundled config (its reference tables resolve from
    # there); other flows' relative paths resolve from the working folder.
    bundled = load_config(BUNDLED_CONFIG)
    if flows == {n: f.model_dump(mode="json") for n, f in bundled.flows.items()}:
        return bundled
    try:
        return Config.model_validate({"flows": flows})
    except ValidationError as exc:
        raise CliError(f"the database's flow configs cannot be read by this flowdeck "
                       f"({exc.error_count()} problem(s)); pass --config") from None


def store(args, config: Config | None = None, *, create: bool = True):
    """The store at --db (else $FLOWDECK_DB, else the config's store.url); a bad URL or an
    unreachable database is a CliError."""
    from flowdeck.storage.db import StoreError, resolve_url
    from flowdeck.storage.store import Store

    url = resolve_url(getattr(args, "db", None), config.store.url if config else None)
    try:
        return Store(url, create_if_empty=create,
                     busy_timeout=config.store.busy_timeout if config else 30.0)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def flow(config: Config, name: str) -> str:
    """`name` if the config has that flow, else a usage error listing the flows."""
    if name not in config.flows:
        raise CliError(f"no flow {name!r} (flows: {', '.join(config.flows)})", EXIT_USAGE)
    return name


def feed_token(args, config: Config) -> str | None:
    """--token, else the variable named by the config's feed.token_env, else none (a
    secret from then on: masked in every log line and error)."""
    from flowdeck.pipeline.core.redact import register_secret

    token = args.token or os.environ.get(config.feed.token_env) or None
    register_secret(token)
    return token


def now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def engine_kwargs(args) -> dict:
    """The Engine's simulator arguments from --simulator, --scenario and --seed."""
    return {"simulator_url": args.simulator, "scenario": args.scenario, "seed": args.seed}


def check_scenario(name: str | None) -> None:
    """A usage error, before anything starts, if the fault scenario does not exist."""
    if name is None:
        return
    from flowdeck.pipeline.demo.scenarios import Scenario

    try:
        Scenario.load(name)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def add_common(p, *, db: bool = True, config: bool = True) -> None:
    """--config and --db."""
    if config:
        p.add_argument("--config", metavar="F",
                       help="config file (default: $FLOWDECK_CONFIG, else the bundled demo)")
    if db:
        p.add_argument("--db", metavar="URL",
                       help="database URL (default: $FLOWDECK_DB, else the config's store.url, "
                            "else sqlite:///flowdeck.db)")


def add_sim(p) -> None:
    """--simulator, --scenario and --seed: where the `simulated` sources are served."""
    p.add_argument("--simulator", metavar="URL",
                   help="base URL of a running `flowdeck simulate` for simulated sources "
                        "(default: start one in-process)")
    p.add_argument("--scenario", metavar="S", help="fault scenario for the in-process simulator")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")

"""Bad input through the real engine: every kind of broken payload is quarantined, never fatal.

Each case points a `kind: file` source ("feed") at a file of tests/support/corpus/ (or at a big
file generated in tmp_path) next to a second, good source ("backup") of the same flow and
a second flow ("control"), runs every flow once against SQLite and checks what a user
would see: the run is not failed, the good data of the same run is stored, the bad item is
in quarantine with a reason and a human message, linked to the raw payload stored exactly
as fetched, and every fetched payload is in the raw store and processed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from flowdeck.pipeline.config import Config, parse_config
from flowdeck.pipeline.engine.engine import Engine, RunSummary
from flowdeck.storage import schema as s
from flowdeck.storage.store import Store

CORPUS = Path(__file__).resolve().parents[1] / "support" / "corpus"
GOOD_KEYS = {"GD01", "GD02"}  # the stations of corpus/good.json
MAPPING = {"station": "station", "ts": "time", "temperature": "temp", "pressure": "pressure"}
FIELDS = {
    "station": {"type": "str", "required": True, "pattern": "^[A-Z0-9]{4}$"},
    "temperature": {"type": "float", "required": True, "unit": "degC", "range": [-90, 60]},
    "pressure": {"type": "float", "unit": "hPa", "range": [850, 1090]},
}


def file_source(name: str, path: Path, fmt: str = "json", **options) -> dict:
    src = {"name": name, "kind": "file", "path": str(path), "format": fmt, "fields": MAPPING}
    if fmt == "json":
        src["records"] = "observations"
    src.update(options)
    return src


def make_config(tmp_path: Path, feed: dict) -> Config:
    """Flow `weather` = the feed under test + a good backup; flow `control` = good only."""
    good = CORPUS / "good.json"
    data = {
        "flows": {
            "weather": {
                "key": "station",
                "sources": [feed, file_source("backup", good)],
                "fields": FIELDS,
            },
            "control": {
                "key": "station",
                "sources": [file_source("main", good)],
                "fields": FIELDS,
            },
        }
    }
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_config(text, str(tmp_path / "flows.yaml"))


async def run_once(config: Config, store: Store, clock) -> dict[str, RunSummary]:
    engine = Engine(config, store, clock=clock)
    await engine.start(schedule=False)
    try:
        return {summary.flow: summary for summary in await engine.run_all_once()}
    finally:
        await engine.stop()


def stored_keys(store: Store, flow: str) -> set[str]:
    return {r["key"] for r in store.records_since(flow)}


def raw_rows(store: Store, flow: str) -> dict[str, dict]:
    rows = store.raw_since(flow, 0)
    by_source = {r["source"]: r for r in rows}
    assert len(by_source) == len(rows), "one payload per source expected"
    return by_source


def raw_outcome(store: Store, raw_id: int) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(
            select(s.raw_status.c.outcome).where(s.raw_status.c.raw_id == raw_id)
        ).scalar_one_or_none()


def check_engine_survived(store: Store, summaries: dict[str, RunSummary]) -> None:
    """The run is not failed, and the good source and the other flow stored their records."""
    weather, control = summaries["weather"], summaries["control"]
    assert weather.status != "failed", weather.error
    assert weather.error is None
    assert control.status == "ok", control.error
    assert GOOD_KEYS <= stored_keys(store, "weather")
    assert stored_keys(store, "control") == GOOD_KEYS


def check_nothing_lost(store: Store, summary: RunSummary) -> None:
    """raw_payloads holds exactly the payloads fetched, and each one was processed."""
    fetched = sum(info["payloads"] for info in summary.sources.values())
    assert fetched == summary.payloads == 2
    assert store.count("raw_payloads", flow="weather") == fetched
    for row in store.raw_since("weather", 0):
        assert store.raw_processed(row["id"]), row["source"]


@dataclass
class Case:
    id: str
    file: str
    fmt: str = "json"
    # (item index in the payload, stage, reason, fragments the message must contain)
    expected: list[tuple[int, str, str, tuple[str, ...]]] = field(default_factory=list)
    good: set[str] = field(default_factory=set)  # feed stations that must still be stored
    options: dict = field(default_factory=dict)  # extra source options
    marks: tuple = ()


WHOLE = -1  # the item index of a quarantined whole payload

CASES = [
    Case(
        "malformed_json",
        "malformed.json",
        expected=[(WHOLE, "collect", "malformed", ("malformed JSON", "line 2"))],
    ),
    Case(
        "truncated_json",
        "truncated.json",
        expected=[(WHOLE, "collect", "malformed", ("malformed JSON", "truncated"))],
    ),
    # Cut inside a string: json reports the position where the string starts, so
    # payload._json_error_message does not see that the payload ends early.
    Case(
        "truncated_json_inside_a_string",
        "truncated_in_string.json",
        expected=[(WHOLE, "collect", "malformed", ("malformed JSON", "truncated"))],
    ),
    Case(
        "csv_short_row",
        "short_row.csv",
        "csv",
        expected=[(1, "collect", "columns", ("line 3", "3 cells", "header has 4"))],
        good={"ST01", "ST03"},
    ),
    Case(
        "csv_wrong_column_count",
        "extra_cells.csv",
        "csv",
        expected=[(1, "collect", "columns", ("line 3", "6 cells", "header has 4"))],
        good={"ST01", "ST03"},
    ),
    Case(
        "jsonl_one_bad_line",
        "one_bad_line.jsonl",
        "jsonl",
        expected=[(2, "collect", "malformed", ("line 3", "malformed JSON"))],
        good={"ST01", "ST02", "ST04"},
    ),
    Case(
        "wrong_types",
        "wrong_type.json",
        expected=[
            (1, "validate", "invalid", ("temperature", "'warm'")),
            (2, "validate", "invalid", ("pressure", "[1012.0]")),
        ],
        good={"ST01"},
    ),
    Case(
        "missing_required_field",
        "missing_required.json",
        # (the wording for a missing value is checked in test_stages.py)
        expected=[(0, "validate", "invalid", ("temperature",))],
        good={"ST02"},
    ),
    Case(
        "missing_key_field",
        "missing_key.json",
        expected=[
            (0, "collect", "missing_key", ("key field", "station")),
            (1, "collect", "missing_key", ("key field", "station")),
        ],
        good={"ST03"},
    ),
    Case(
        "nan_and_infinity_json_literals",
        "nan_literals.json",
        expected=[
            (0, "validate", "invalid", ("temperature", "finite", "nan")),
            (1, "validate", "invalid", ("pressure", "finite", "inf")),
            (2, "validate", "invalid", ("temperature", "finite", "-inf")),
        ],
        good={"ST04"},
    ),
    Case(
        "nan_and_infinity_csv_strings",
        "nan_strings.csv",
        "csv",
        expected=[
            (0, "validate", "invalid", ("temperature", "finite", "'NaN'")),
            (1, "validate", "invalid", ("pressure", "finite", "'inf'")),
            (2, "validate", "invalid", ("temperature", "finite", "'-Infinity'")),
        ],
        good={"ST04"},
    ),
    Case(
        "invalid_utf8",
        "invalid_utf8.json",
        expected=[(WHOLE, "collect", "encoding", ("invalid UTF-8", "byte 99"))],
    ),
    Case(
        "impossible_calendar_date",
        "impossible_date.json",
        expected=[(0, "collect", "bad_timestamp", ("2026-13-45",))],
        good={"ST02"},
    ),
    Case(
        "impossible_epoch",
        "epoch_huge.json",
        expected=[(0, "collect", "bad_timestamp", ("impossible timestamp", "1e+20"))],
        good={"ST02"},
        options={"timestamp": {"format": "epoch_s"}},
    ),
    Case(
        "words_for_a_timestamp",
        "yesterday.json",
        expected=[(0, "collect", "bad_timestamp", ("'yesterday'",))],
        good={"ST02"},
    ),
    Case(
        "far_future_timestamp",
        "far_future.json",
        expected=[(1, "collect", "future_timestamp", ("2099-01-01T00:00:00Z", "ahead of now"))],
        good={"ST01"},
    ),
    Case(
        "html_instead_of_json",
        "html_page.json",
        expected=[(WHOLE, "collect", "not_json", ("expected JSON, got HTML", "502 Bad Gateway"))],
    ),
    Case("empty_file", "empty.json", expected=[(WHOLE, "collect", "empty", ("empty",))]),
    Case(
        "schema_drift_records_path_missing",
        "schema_drift.json",
        expected=[(WHOLE, "collect", "records_path", ("'observations'",))],
    ),
]


def check_quarantine(store: Store, feed_raw_id: int, case: Case) -> None:
    rows = store.quarantined("weather")
    got = sorted((r["item"], r["stage"], r["reason"]) for r in rows)
    assert got == sorted((item, stage, reason) for item, stage, reason, _ in case.expected), [
        (r["item"], r["reason"], r["message"]) for r in rows
    ]
    by_item = {r["item"]: r for r in rows}
    for item, _stage, _reason, fragments in case.expected:
        row = by_item[item]
        assert row["source"] == "feed"
        assert row["raw_id"] == feed_raw_id
        assert row["state"] == "open"
        for fragment in fragments:
            assert fragment in row["message"], (fragment, row["message"])
    # The operator sees one quarantine issue pointing at the bad payload.
    issues = [i for i in store.issues(flow="weather") if i["kind"] == "quarantine"]
    assert len(issues) == 1
    assert issues[0]["raw_ids"] == [feed_raw_id]
    assert issues[0]["source"] == "feed"
    assert not [i for i in store.issues(flow="control") if i["kind"] == "quarantine"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
async def test_bad_corpus_file_is_quarantined_and_the_run_goes_on(
    case: Case, tmp_path, sqlite_store, clock
):
    path = CORPUS / case.file
    config = make_config(tmp_path, file_source("feed", path, case.fmt, **case.options))

    summaries = await run_once(config, sqlite_store, clock)

    check_engine_survived(sqlite_store, summaries)
    weather = summaries["weather"]
    check_nothing_lost(sqlite_store, weather)
    assert weather.quarantined == len(case.expected)
    # Good records of the very same payload are stored, bad ones are not.
    assert stored_keys(sqlite_store, "weather") == GOOD_KEYS | case.good
    raw = raw_rows(sqlite_store, "weather")
    feed = raw["feed"]
    assert feed["body"] == path.read_bytes()  # the raw copy is the bytes as fetched
    assert sqlite_store.get_raw(feed["id"])["body"] == path.read_bytes()
    check_quarantine(sqlite_store, feed["id"], case)
    assert raw_outcome(sqlite_store, feed["id"]) == ("partial" if case.good else "rejected")
    assert raw_outcome(sqlite_store, raw["backup"]["id"]) == "ok"


def test_corpus_is_small_and_every_file_is_used():
    files = {p.name for p in CORPUS.iterdir() if p.is_file()}
    used = {c.file for c in CASES} | {"good.json"}
    assert files == used
    assert all((CORPUS / f).stat().st_size < 4096 for f in files)


async def test_payload_over_max_bytes_is_cut_and_quarantined(tmp_path, sqlite_store, clock):
    # A real 50 MB file of otherwise valid records; the source reads at most 1 MiB of it.
    record = (
        json.dumps(
            {"station": "ST01", "time": "2026-11-24T12:00:00Z", "temp": 10.5, "pressure": 1010.0}
        ).encode()
        + b",\n"
    )
    n = 50 * 10**6 // len(record) + 1
    body = b'{"observations": [\n' + record * n + record[:-2] + b"\n]}\n"
    big = tmp_path / "huge.json"
    big.write_bytes(body)
    assert big.stat().st_size > 50 * 10**6
    limit = 2**20
    config = make_config(tmp_path, file_source("feed", big, max_bytes="1MiB"))

    summaries = await run_once(config, sqlite_store, clock)

    check_engine_survived(sqlite_store, summaries)
    check_nothing_lost(sqlite_store, summaries["weather"])
    assert stored_keys(sqlite_store, "weather") == GOOD_KEYS
    raw = raw_rows(sqlite_store, "weather")["feed"]
    assert raw["truncated"] is True
    stored = sqlite_store.get_raw(raw["id"])["body"]
    # Cut at the limit (reading may overshoot by the one byte that proves it is too large).
    assert limit <= len(stored) <= limit + 1
    assert body.startswith(stored)
    rows = sqlite_store.quarantined("weather")
    assert [(r["item"], r["stage"], r["reason"]) for r in rows] == [(WHOLE, "collect", "too_large")]
    assert rows[0]["raw_id"] == raw["id"]
    assert "max_bytes" in rows[0]["message"]
    assert raw_outcome(sqlite_store, raw["id"]) == "rejected"


async def test_ten_thousand_levels_of_nesting_are_refused(tmp_path, sqlite_store, clock):
    depth = 10_000
    body = b'{"observations": ' + b"[" * depth + b"]" * depth + b"}"
    deep = tmp_path / "deep.json"
    deep.write_bytes(body)
    config = make_config(tmp_path, file_source("feed", deep))

    summaries = await run_once(config, sqlite_store, clock)

    check_engine_survived(sqlite_store, summaries)
    check_nothing_lost(sqlite_store, summaries["weather"])
    assert stored_keys(sqlite_store, "weather") == GOOD_KEYS
    raw = raw_rows(sqlite_store, "weather")["feed"]
    assert sqlite_store.get_raw(raw["id"])["body"] == body
    rows = sqlite_store.quarantined("weather")
    assert [(r["item"], r["stage"], r["reason"]) for r in rows] == [(WHOLE, "collect", "too_deep")]
    assert rows[0]["raw_id"] == raw["id"]
    assert f"nested {depth + 1} levels deep" in rows[0]["message"]


async def test_deep_nesting_in_one_jsonl_line_spares_the_other_lines(tmp_path, sqlite_store, clock):
    good = json.dumps({"station": "ST01", "time": "2026-11-24T12:00:00Z", "temp": 10.5})
    deep_line = '{"station": "ST02", "x": ' + "[" * 10_000 + "]" * 10_000 + "}"
    path = tmp_path / "deep.jsonl"
    path.write_text(f"{good}\n{deep_line}\n")
    config = make_config(tmp_path, file_source("feed", path, "jsonl"))

    summaries = await run_once(config, sqlite_store, clock)

    check_engine_survived(sqlite_store, summaries)
    assert stored_keys(sqlite_store, "weather") == GOOD_KEYS | {"ST01"}
    rows = sqlite_store.quarantined("weather")
    assert [(r["item"], r["reason"]) for r in rows] == [(1, "too_deep")]
    assert "line 2" in rows[0]["message"]


RECOVERY = (
    "malformed_json",
    "html_instead_of_json",
    "invalid_utf8",
    "empty_file",
    "csv_short_row",
    "jsonl_one_bad_line",
)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in RECOVERY], ids=lambda c: c.id)
async def test_feed_recovers_once_the_file_is_fixed(case: Case, tmp_path, sqlite_store, clock):
    """A bad payload does not poison the source: the next good version is processed."""
    path = tmp_path / f"feed.{case.fmt}"
    shutil.copyfile(CORPUS / case.file, path)
    ext = "csv" if case.fmt == "csv" else "json"
    config = make_config(tmp_path, file_source("feed", path, case.fmt, **case.options))
    engine = Engine(config, sqlite_store, clock=clock)
    await engine.start(schedule=False)
    try:
        first = await engine.run_flow("weather")
        clock.advance(60)
        fixed = {
            "json": '{"observations": [{"station": "ST09", "time": "2026-11-24T12:01:00Z", '
            '"temp": 9.5}]}',
            "csv": "station,time,temp,pressure\nST09,2026-11-24T12:01:00Z,9.5,\n",
        }[ext]
        if case.fmt == "jsonl":
            fixed = '{"station": "ST09", "time": "2026-11-24T12:01:00Z", "temp": 9.5}\n'
        path.write_text(fixed + "\n")
        second = await engine.run_flow("weather")
    finally:
        await engine.stop()
    assert first.status != "failed" and second.status != "failed"
    assert first.quarantined == len(case.expected)
    assert second.quarantined == 0
    assert second.sources["feed"]["payloads"] == 1
    assert "ST09" in stored_keys(sqlite_store, "weather")
    # Both versions of the file are kept, and the bad one is still in quarantine.
    assert sqlite_store.count("raw_payloads", flow="weather", source="feed") == 2
    assert len(sqlite_store.quarantined("weather")) == len(case.expected)

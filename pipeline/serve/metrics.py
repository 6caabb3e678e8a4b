"""The daemon's Prometheus metrics, served on ``/metrics`` by the feed server.

One :class:`~prometheus_client.CollectorRegistry` per server (so two servers in
one process, as in tests, never share or clash). The series are fed from hub
events as they pass through the feed, from an engine snapshot at start (gauges
only: counters count from the moment the feed subscribed, as Prometheus
counters do after a restart), and, at scrape time, from a query of open issues.
Names follow DESIGN.md section 10, all prefixed ``flowdeck_``.
"""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from flowdeck.pipeline.core.shapes import CacheSnapshot, HubEvent, ViewerSnapshot
from flowdeck.pipeline.engine.breakers import BREAKER_CODES

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("out", "rejected", "dropped")
STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
REGULAR_TRIGGERS = ("schedule", "manual", "once")


class FeedMetrics:
    """Every ``flowdeck_*`` series, plus plain counters for the feed's ``metrics`` channel."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records = Counter(
            "flowdeck_records",
            "Records leaving each stage of each flow, by outcome "
            "(out: passed on, rejected: quarantined, dropped: duplicates and the like).",
            ["flow", "stage", "outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "flowdeck_stage_seconds",
            "Seconds a stage spent on one run's batch.",
            ["flow", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.source_up = Gauge(
            "flowdeck_source_up",
            "1 if the source's last fetch succeeded, 0 if it failed.",
            ["flow", "source"],
            registry=r,
        )
        self.source_latency = Gauge(
            "flowdeck_source_latency_seconds",
            "Latency of the source's last successful fetch.",
            ["flow", "source"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "flowdeck_breaker_state",
            "Circuit breaker of a source: 0 closed, 1 half-open, 2 open.",
            ["flow", "source"],
            registry=r,
        )
        self.issues_open = Gauge(
            "flowdeck_quality_issues_open",
            "Quality issues open or acknowledged, by severity.",
            ["flow", "severity"],
            registry=r,
        )
        self.quarantine = Counter(
            "flowdeck_quarantine", "Items quarantined, by reason.", ["flow", "reason"], registry=r
        )
        self.cache_requests = Counter(
            "flowdeck_cache_requests",
            "Cache lookups per layer (l1 memory, l2 redis, l3 database, l4 http) and "
            "result (hit, miss). For l4 a hit is a 304 Not Modified.",
            ["layer", "result"],
            registry=r,
        )
        self.cache_invalidations = Counter(
            "flowdeck_cache_invalidations",
            "Cache entries invalidated per layer (new values, purges, other daemons).",
            ["layer"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "flowdeck_cache_evictions",
            "Cache entries evicted per layer (LRU and expiry).",
            ["layer"],
            registry=r,
        )
        self.cache_errors = Counter(
            "flowdeck_cache_errors",
            "Failed cache operations per layer (Redis unreachable, timeouts).",
            ["layer"],
            registry=r,
        )
        self.cache_size = Gauge(
            "flowdeck_cache_size", "Entries held per cache layer.", ["layer"], registry=r
        )
        self._cache_seen: dict[tuple[str, str], int] = {}
        self.feed_clients = Gauge(
            "flowdeck_feed_clients", "Websocket viewers connected to the feed.", registry=r
        )
        self.feed_messages = Counter(
            "flowdeck_feed_messages",
            "Messages written to viewers, per channel ('-' for replies, errors and heartbeats).",
            ["channel"],
            registry=r,
        )
        self.feed_dropped = Counter(
            "flowdeck_feed_dropped",
            "Messages not delivered, by reason: conflated (superseded "
            "by a newer one for a slow viewer), slow_viewer (discarded when a slow viewer was "
            "disconnected), hub_overflow (events the feed could not keep up with).",
            ["reason"],
            registry=r,
        )
        self.fanout_published = Counter(
            "flowdeck_fanout_published",
            "Deltas this node added to the Redis streams of the event fan-out.",
            registry=r,
        )
        self.fanout_received = Counter(
            "flowdeck_fanout_received",
            "Stream entries this node read from the event fan-out (every node's, its own too).",
            registry=r,
        )
        self.fanout_lag = Gauge(
            "flowdeck_fanout_lag_seconds",
            "Seconds between publishing and this node reading the newest fan-out entry.",
            registry=r,
        )
        self.fanout_degraded = Gauge(
            "flowdeck_fanout_degraded",
            "1 while Redis is unreachable: viewers of this node see its own flows only.",
            registry=r,
        )
        self.fanout_outages = Counter(
            "flowdeck_fanout_outages",
            "Times the event fan-out lost Redis.",
            registry=r,
        )
        self._fanout_seen = (0, 0, 0)
        self.run_duration = Gauge(
            "flowdeck_run_duration_seconds",
            "Duration of the flow's last run.",
            ["flow"],
            registry=r,
        )
        self.last_success = Gauge(
            "flowdeck_last_success_timestamp_seconds",
            "When the flow's last successful run finished, in Unix seconds.",
            ["flow"],
            registry=r,
        )
        self.series_owed_rows = Gauge(
            "flowdeck_series_owed_rows",
            "Series points and raw-status marks of stored runs not yet written (they are "
            "written for many runs at once, store.derived_delay; growing: writes fail).",
            registry=r,
        )
        self.series_owed_age = Gauge(
            "flowdeck_series_owed_age_seconds",
            "How long the oldest of them has waited (0 when none).",
            registry=r,
        )
        self.runs = Counter(
            "flowdeck_runs",
            "Regular runs (schedule, manual, once) finished, by status (ok, partial, failed).",
            ["flow", "status"],
            registry=r,
        )
        self.store_up = Gauge(
            "flowdeck_store_up",
            "1 while the database takes writes, 0 while it is unavailable (payloads spool).",
            registry=r,
        )
        self.store_write_errors = Counter(
            "flowdeck_store_write_errors",
            "Store calls of the engine that failed with the store unavailable, by reason: "
            "disk_full (ENOSPC, SQLite's 'database or disk is full'), io_error, locked, "
            "unavailable (unreachable, refused, timed out).",
            ["reason"],
            registry=r,
        )
        self._write_errors_seen: dict[str, int] = {}
        self.fetches_paused = Counter(
            "flowdeck_fetches_paused",
            "Runs that did not fetch because nothing fetched could be kept: the database "
            "takes no writes and the raw spool can take no more (its bound or its disk).",
            ["flow"],
            registry=r,
        )
        self._fetches_paused_seen: dict[str, int] = {}
        self.spool_bytes = Gauge(
            "flowdeck_spool_bytes",
            "Bytes of fetched payloads waiting in the raw spool for the database.",
            ["flow"],
            registry=r,
        )
        self.spool_payloads = Gauge(
            "flowdeck_spool_payloads", "Payloads waiting in the raw spool.", ["flow"], registry=r
        )
        self.spool_max_bytes = Gauge(
            "flowdeck_spool_max_bytes",
            "The spool's bound per flow (store.spool_max); past it new payloads are dropped.",
            ["flow"],
            registry=r,
        )
        self.spool_dropped = Gauge(
            "flowdeck_spool_dropped_payloads",
            "Payloads dropped because the spool was full, since the engine started.",
            ["flow"],
            registry=r,
        )
        self.db_size = Gauge(
            "flowdeck_db_size_bytes",
            "The database's size on disk (SQLite: file and WAL; PostgreSQL: "
            "pg_database_size), as of the last retention pass.",
            registry=r,
        )
        self.db_rows = Gauge(
            "flowdeck_db_rows", "Rows per table, as of the last retention pass.", ["table"],
            registry=r,
        )
        self.db_oldest = Gauge(
            "flowdeck_db_oldest_timestamp_seconds",
            "Time of the oldest row kept per table (Unix seconds; absent when empty).",
            ["table"],
            registry=r,
        )
        self.retention_last = Gauge(
            "flowdeck_retention_last_pass_timestamp_seconds",
            "When the last retention pass finished (Unix seconds).",
            registry=r,
        )
        self.retention_duration = Gauge(
            "flowdeck_retention_last_pass_duration_seconds",
            "How long the last retention pass took.",
            registry=r,
        )
        self.retention_ok = Gauge(
            "flowdeck_retention_last_pass_ok",
            "1 if the last retention pass finished, 0 if it stopped on an error.",
            registry=r,
        )
        self.retention_deleted = Gauge(
            "flowdeck_retention_last_pass_deleted_rows",
            "Rows the last retention pass deleted, per kind (records, series, raw, ...).",
            ["kind"],
            registry=r,
        )
        for reason in ("conflated", "slow_viewer", "hub_overflow", "rate_limited"):
            self.feed_dropped.labels(reason)
        self._sent_children: dict[str, Counter] = {}
        self._dropped_children = {
            k: self.feed_dropped.labels(k)
            for k in ("conflated", "slow_viewer", "hub_overflow", "rate_limited")
        }
        # Plain mirrors for the metrics channel (reading prometheus objects back is awkward).
        self.flow_stats: dict[str, dict] = {}
        self.sent_total = 0
        self.dropped: dict[str, int] = defaultdict(int)
        self._rate_mark: tuple[float, dict[str, int]] = (time.monotonic(), {})

    # ------------------------------------------------------------ seeding

    def seed(self, snapshot: dict) -> None:
        """Create every flow's series and set gauges from an engine snapshot."""
        self.set_breakers(snapshot)
        self.set_series_owed(snapshot)
        self.set_store(snapshot)
        self.set_storage(snapshot)
        self.set_caches(snapshot.get("caches"))
        for flow, f in snapshot.get("flows", {}).items():
            st = self._flow(flow)
            for stage in f.get("totals", {}):
                for outcome in OUTCOMES:
                    self.records.labels(flow, stage, outcome)
                self.stage_seconds.labels(flow, stage)
            for source, s in f.get("sources", {}).items():
                if s.get("requests"):
                    up = 1 if s.get("consecutive_failures", 0) == 0 else 0
                    self.source_up.labels(flow, source).set(up)
                if s.get("latency_p50_ms") is not None:
                    self.source_latency.labels(flow, source).set(s["latency_p50_ms"] / 1000)
            if f.get("last_success_ms"):
                self.last_success.labels(flow).set(f["last_success_ms"] / 1000)
                st["last_success_ms"] = f["last_success_ms"]
            last = f.get("last_run")
            if last:
                self.run_duration.labels(flow).set(last.get("duration_ms", 0) / 1000)
                st["last_run_s"] = last.get("duration_ms", 0) / 1000

    def set_series_owed(self, snapshot: ViewerSnapshot) -> None:
        owed = snapshot.get("series_owed") or {}
        self.series_owed_rows.set(owed.get("rows") or 0)
        self.series_owed_age.set(owed.get("age_s") or 0)

    def set_store(self, snapshot: ViewerSnapshot | dict) -> None:
        """The store's availability, its failed writes by reason and each flow's spool."""
        up = 1
        errors: dict[str, int] = {}
        spool_max = (snapshot.get("storage") or {}).get("spool_max_bytes")
        for flow, f in snapshot.get("flows", {}).items():
            st = f.get("store") or {}
            if st.get("available") is False:
                up = 0
            self.spool_bytes.labels(flow).set(st.get("buffered_bytes") or 0)
            self.spool_payloads.labels(flow).set(st.get("buffered") or 0)
            self.spool_dropped.labels(flow).set(st.get("dropped") or 0)
            if spool_max:
                self.spool_max_bytes.labels(flow).set(spool_max)
            errors = st.get("write_errors") or {}
            paused, seen = st.get("fetches_paused") or 0, self._fetches_paused_seen.get(flow, 0)
            if paused > seen:
                self.fetches_paused.labels(flow).inc(paused - seen)
                self._fetches_paused_seen[flow] = paused
        # one guard for every flow: each flow's store state carries the same counts
        for reason, n in errors.items():
            seen = self._write_errors_seen.get(reason, 0)
            if n > seen:
                self.store_write_errors.labels(reason).inc(n - seen)
                self._write_errors_seen[reason] = n
        self.store_up.set(up)

    def set_storage(self, snapshot: ViewerSnapshot | dict) -> None:
        """Database size, rows and oldest row per table, the last retention pass."""
        storage = snapshot.get("storage") or {}
        size = storage.get("size_bytes")
        if size is not None:
            self.db_size.set(size)
        self.db_oldest.clear()
        for table, t in (storage.get("tables") or {}).items():
            self.db_rows.labels(table).set(t.get("rows") or 0)
            oldest = t.get("oldest_ms")
            if oldest is not None:
                self.db_oldest.labels(table).set(oldest / 1000)
        last = storage.get("last_pass")
        if last:
            self.retention_last.set(last["finished_ms"] / 1000)
            self.retention_duration.set(last["duration_s"])
            self.retention_ok.set(0 if last.get("error") else 1)
            self.retention_deleted.clear()
            for kind, n in (last.get("deleted") or {}).items():
                self.retention_deleted.labels(kind).set(n)

    def set_breakers(self, snapshot: ViewerSnapshot) -> None:
        """Every source's breaker state as the engine has it now (0 closed, 1, 2 open)."""
        for flow, f in snapshot.get("flows", {}).items():
            for source, s in f.get("sources", {}).items():
                state = (s.get("breaker") or {}).get("state", "closed")
                self.breaker_state.labels(flow, source).set(BREAKER_CODES.get(state, 0))

    def _flow(self, flow: str) -> dict:
        st = self.flow_stats.get(flow)
        if st is None:
            st = self.flow_stats[flow] = {
                "records_out": {},
                "runs": 0,
                "failed_runs": 0,
                "quarantined": 0,
                "last_run_s": None,
                "last_success_ms": None,
                "stored_per_s": 0.0,
            }
        return st

    # ------------------------------------------------------------ events

    def observe(self, ev: HubEvent) -> None:
        """Account one hub event (``Event.as_dict()``)."""
        t = ev.get("type")
        flow = ev.get("flow")
        d = ev.get("data") or {}
        if t == "run_finished" and flow:
            st = self._flow(flow)
            for stage, s in (d.get("stages") or {}).items():
                self.records.labels(flow, stage, "out").inc(s.get("out", 0))
                self.records.labels(flow, stage, "rejected").inc(s.get("rejected", 0))
                self.records.labels(flow, stage, "dropped").inc(s.get("dropped", 0))
                self.stage_seconds.labels(flow, stage).observe(s.get("ms", 0.0) / 1000)
                st["records_out"][stage] = st["records_out"].get(stage, 0) + s.get("out", 0)
            if d.get("trigger") in REGULAR_TRIGGERS:
                self.runs.labels(flow, d.get("status") or "unknown").inc()
                st["runs"] += 1
                seconds = d.get("duration_ms", 0) / 1000
                self.run_duration.labels(flow).set(seconds)
                st["last_run_s"] = seconds
                if d.get("status") == "failed":
                    st["failed_runs"] += 1
                elif d.get("finished_ms"):
                    self.last_success.labels(flow).set(d["finished_ms"] / 1000)
                    st["last_success_ms"] = d["finished_ms"]
        elif t == "fetch" and flow:
            source = d.get("source") or "-"
            if d.get("ok"):
                self.source_up.labels(flow, source).set(1)
                if d.get("latency_ms") is not None:
                    self.source_latency.labels(flow, source).set(d["latency_ms"] / 1000)
            else:
                self.source_up.labels(flow, source).set(0)
        elif t == "breaker" and flow:
            code = BREAKER_CODES.get(d.get("state"), 0)
            self.breaker_state.labels(flow, d.get("source") or "-").set(code)
        elif t == "cache_stats":
            self.set_caches(d)
        elif t == "quarantine" and flow:
            self.quarantine.labels(flow, d.get("reason") or "unknown").inc()
            self._flow(flow)["quarantined"] += 1

    def set_caches(self, caches: CacheSnapshot | None) -> None:
        """Cache counters from the engine's cumulative per-layer statistics.

        The engine counts; Prometheus counters only go up, so each is advanced by the
        difference from the last value seen (a smaller value, an engine restart, resets it).
        """
        for layer, st in ((caches or {}).get("layers") or {}).items():
            for metric, child in (
                ("hits", self.cache_requests.labels(layer, "hit")),
                ("misses", self.cache_requests.labels(layer, "miss")),
                ("invalidations", self.cache_invalidations.labels(layer)),
                ("evictions", self.cache_evictions.labels(layer)),
                ("errors", self.cache_errors.labels(layer)),
            ):
                value = int(st.get(metric) or 0)
                before = self._cache_seen.get((layer, metric), 0)
                if value > before:
                    child.inc(value - before)
                self._cache_seen[(layer, metric)] = value
            self.cache_size.labels(layer).set(st.get("size") or 0)

    def set_open_issues(self, rows: list[dict], flows: list[str]) -> None:
        """Open and acknowledged issues, counted by flow and severity (absent ones are 0)."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for r in rows:
            counts[(r.get("flow") or "-", r.get("severity") or "info")] += 1
        self.issues_open.clear()
        for flow in flows:
            for sev in ("info", "warning", "error", "critical"):
                self.issues_open.labels(flow, sev).set(counts.pop((flow, sev), 0))
        for (flow, sev), n in counts.items():
            self.issues_open.labels(flow, sev).set(n)

    # ------------------------------------------------------------ feed

    def sent(self, channel: str, n: int) -> None:
        child = self._sent_children.get(channel)
        if child is None:
            child = self._sent_children[channel] = self.feed_messages.labels(channel)
        child.inc(n)
        self.sent_total += n

    def drop(self, reason: str, n: int = 1) -> None:
        self._dropped_children[reason].inc(n)
        self.dropped[reason] += n

    # ------------------------------------------------------------ output

    def tick(self) -> None:
        """Recompute the stored-records rate of every flow since the previous tick."""
        now = time.monotonic()
        t0, marks = self._rate_mark
        dt = max(1e-6, now - t0)
        new_marks = {}
        for flow, st in self.flow_stats.items():
            stored = st["records_out"].get("store", 0)
            st["stored_per_s"] = round(max(0, stored - marks.get(flow, stored)) / dt, 2)
            new_marks[flow] = stored
        self._rate_mark = (now, new_marks)

    def channel_data(self, clients: int) -> dict:
        """What the ``metrics`` channel carries: per-flow counts and rates, feed counters."""
        return {
            "flows": {
                k: {**v, "records_out": dict(v["records_out"])} for k, v in self.flow_stats.items()
            },
            "feed": {
                "clients": clients,
                "messages": self.sent_total,
                "dropped": dict(self.dropped),
            },
        }

    def set_fanout(self, status: dict | None) -> None:
        """The fan-out's counters (fanout.Fanout.status) onto their series."""
        if status is None:
            return
        pub, rec, out = status["published"], status["received"], status["outages"]
        p0, r0, o0 = self._fanout_seen
        if pub > p0:
            self.fanout_published.inc(pub - p0)
        if rec > r0:
            self.fanout_received.inc(rec - r0)
        if out > o0:
            self.fanout_outages.inc(out - o0)
        self._fanout_seen = (max(pub, p0), max(rec, r0), max(out, o0))
        self.fanout_lag.set(status["lag_s"])
        self.fanout_degraded.set(1 if status["degraded"] else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

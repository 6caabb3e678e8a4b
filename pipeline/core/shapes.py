"""The shapes of what crosses process boundaries: engine -> control -> feed -> console.

An engine's snapshot, its hub events and its run summaries travel as plain JSON-able
dicts: ``Engine.snapshot()`` (``EngineSnapshot``), which ``LocalControl.snapshot()``
completes for viewers (``ViewerSnapshot``); ``Event.as_dict()`` (``HubEvent``, its
``data`` one of ``EVENT_DATA``); ``RunSummary.as_dict()`` (``RunSummaryDict``). The feed
sends them as JSON (``docs/protocol.md``) and the console reads them back, in this
process or another.

They are ``TypedDict``s: the dicts stay what they are (nothing is built or checked at
run time), and a type checker knows their keys. ``tests/integration/test_shapes.py``
checks a real engine's snapshot, events and summaries against them, so what is declared
here is what is sent. Over JSON a tuple arrives as a list.
"""

from typing import Any, NotRequired, TypedDict

# ---------------------------------------------------------------- run summaries

# StageStats.as_dict(): one stage's counters for a run ("in" is a keyword, hence the form).
StageCounts = TypedDict("StageCounts", {
    "in": int, "out": int, "rejected": int, "dropped": int, "errors": int,
    "ms": float,  # time spent in the stage, milliseconds
})


class RunSource(TypedDict):
    """What one source brought to a run (``RunSummary.sources``)."""

    payloads: int
    error: NotRequired[str]  # its fetch failed
    skipped: NotRequired[str]  # not asked: pinned elsewhere, breaker open
    unchanged: NotRequired[int]  # payloads already stored and processed


class RunSummaryDict(TypedDict):
    """``RunSummary.as_dict()``: the ``run_finished`` event, ``last_run``, a run row's stats."""

    flow: str
    run_id: int | None  # None: run while the store was away
    trigger: str  # schedule | once | manual | replay | resume
    status: str  # ok | partial | failed
    started_ms: int
    finished_ms: int
    duration_ms: int
    payloads: int
    quarantined: int
    issues_raised: int
    issues_opened: int
    conflicts: int
    anomalies: int
    buffered: int  # payloads spooled because the store was unavailable
    stages: dict[str, StageCounts]  # by stage name, in STAGES order
    sources: dict[str, RunSource]
    error: str | None


# ---------------------------------------------------------------- engine snapshot


class BreakerSnapshot(TypedDict):
    """``Breaker.as_dict()``."""

    state: str  # closed | open | half_open
    outcomes: list[bool]  # True = success, oldest first
    opened_ms: int | None
    retry_at_ms: int | None
    cooldown_s: float | None
    probe_successes: int
    opens: int
    failure_rate: float


class SourceSnapshot(TypedDict):
    """One source of a flow: its configuration, ``SourceHealth.as_dict()`` and breaker."""

    kind: str
    priority: int
    enabled: bool
    requests: int
    errors: int
    consecutive_failures: int
    last_ok_ms: int | None
    last_error: str | None
    last_error_ms: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    unchanged: int
    error_rate: float
    newest_ts_ms: int | None
    stale: bool
    error_rate_high: bool
    breaker: BreakerSnapshot


class FlowStoreState(TypedDict):
    """The store as a flow sees it: available, or down and its payloads spooled."""

    available: bool
    down_since_ms: int | None
    buffered: int
    buffered_bytes: int
    dropped: int
    # why writes fail while it is down (disk_full, locked, io_error, unavailable) and the
    # driver's one-line message; None while it takes writes
    reason: NotRequired[str | None]
    error: NotRequired[str | None]
    write_errors: NotRequired[dict[str, int]]  # failed store writes since start, by reason
    spool_refused: NotRequired[str | None]  # why the spool last refused a payload
    # while it lasts: the store_unavailable action and issue whose rows wait for the store
    outage: NotRequired[dict[str, Any] | None]
    fetches_paused: NotRequired[int]  # runs that fetched nothing: nothing could be kept


class MaintenanceState(TypedDict):
    """The maintenance window a flow is in (pipeline/engine/maintenance.py)."""

    mode: str  # pause | mute
    name: str  # the window's name, "window N", or "operator"
    start_ms: int
    until_ms: int
    actor: str  # auto (configured) or the operator who started it


class FlowSnapshot(TypedDict):
    """One flow in ``Engine.snapshot()``."""

    state: str  # healthy | degraded | failing | paused
    paused: bool
    maintenance: MaintenanceState | None  # the window it is in now
    running: bool
    runs: int
    failed_runs: int
    last_success_ms: int | None
    next_run_ms: int | None
    last_run: RunSummaryDict | None
    totals: dict[str, StageCounts]  # since the engine started, by stage
    throughput: list[tuple[int, int]]  # (finished_ms, records stored) per recent run
    mode: str  # failover | merge
    incident: bool  # every source down: serving last-known-good values
    stale: bool
    primary: str | None
    pinned: str | None  # forced failover
    active: list[str]  # sources that answered the last run, best first
    store: FlowStoreState
    sources: dict[str, SourceSnapshot]


class CacheLayer(TypedDict):
    """One cache layer (l1 memory, l2 redis, l3 database, l4 http): ``layer_stats()``."""

    hits: int
    misses: int
    evictions: int
    invalidations: int
    errors: int
    hit_rate: float | None
    name: str
    enabled: bool
    connected: bool | None  # l2 only; None elsewhere
    size: int
    capacity: int | None
    error: NotRequired[str | None]  # l2 only: why it is not connected


class CachePoint(TypedDict):
    """One statistics interval of the caches (``Caches.sample()``)."""

    ts: float
    rates: dict[str, float | None]  # hit rate by layer
    requests: dict[str, int]  # lookups by layer


class HotKey(TypedDict):
    flow: str
    key: str
    hits: int


class CacheSnapshot(TypedDict):
    """``Caches.snapshot()``: the console's Caches screen, the ``caches`` channel."""

    layers: dict[str, CacheLayer]
    history: list[CachePoint]
    hot_keys: list[HotKey]
    node: str  # this process's id among the processes sharing Redis


class SeriesOwed(TypedDict):
    """Series points and raw status that runs still owe the store (``derived_delay``)."""

    rows: int
    age_s: float | None  # since the oldest was deferred; None when nothing is owed


class TableStats(TypedDict):
    """One table's size: rows, its oldest row's time (epoch ms; None when empty), and on
    PostgreSQL its bytes (table, indexes and TOAST)."""

    rows: int
    oldest_ms: int | None
    bytes: NotRequired[int]


class RetentionPass(TypedDict):
    """The last retention pass (pipeline/engine/retention.py)."""

    started_ms: int
    finished_ms: int
    duration_s: float
    steps: int  # transactions, each of at most retention.batch rows
    deleted: dict[str, int]  # per kind (records, series, raw, ...)
    vacuum: dict[str, Any]  # what giving space back did
    error: str | None


class StorageSnapshot(TypedDict):
    """The database's statistics as of the last retention pass (or start)."""

    backend: str | None  # sqlite | postgresql; None before the first measurement
    size_bytes: int | None
    measured_ms: int | None
    tables: dict[str, TableStats]
    last_pass: RetentionPass | None
    spool_max_bytes: int  # store.spool_max per flow: past it new payloads are dropped


class ClusterNode(TypedDict):
    node: str
    state: str  # up | stopped
    live: bool  # heartbeat younger than the lease TTL
    heartbeat_age_ms: int
    flows: list[str]


class ClusterLease(TypedDict):
    flow: str
    node: str | None  # None: released
    token: int  # the fencing token
    held: bool
    age_ms: int  # since it was acquired
    expires_in_ms: int
    target: str | None  # an operator's move


class ClusterSnapshot(TypedDict):
    """This node and, as of its last renewal, the cluster (pipeline/engine/cluster.py)."""

    node: str
    ttl_s: float
    owned: list[str]
    tokens: dict[str, int]
    valid: bool  # before its local deadline: it may run the flows it owns
    last_renewal_age_s: float | None
    error: str | None
    takeovers: int
    handovers: int
    lost: int
    nodes: list[ClusterNode]
    leases: list[ClusterLease]


class EngineSnapshot(TypedDict):
    """``Engine.snapshot()``: the engine's own state, from memory (no database read)."""

    ts: float
    flows: dict[str, FlowSnapshot]
    caches: CacheSnapshot
    series_owed: SeriesOwed
    storage: StorageSnapshot
    cluster: ClusterSnapshot | None  # None: not a node of a cluster (SQLite)


# ---------------------------------------------------------------- rows viewers receive
# Store rows as viewers get them (JSON-able: bytes decoded, NaN as null): one key per
# column of the table in flowdeck.storage.schema.


class RecordValue(TypedDict):
    """A stored value as a ``records`` event carries it (the newest per key of a run)."""

    key: str
    ts_ms: int
    data: dict[str, Any]
    quality: float
    anomaly_score: float | None
    anomalous: bool
    flags: list[str]
    sources: list[str]


class LatestRow(RecordValue):
    """A row of the ``latest`` table: the newest record per key."""

    flow: str
    updated_ms: int


class IssueRow(TypedDict):
    id: int
    flow: str
    kind: str
    severity: str  # info | warning | error | critical
    state: str  # open | acknowledged | resolved | muted
    title: str
    detail: dict[str, Any]
    fingerprint: str
    key: str | None
    source: str | None
    count: int
    first_ms: int
    last_ms: int
    updated_ms: int
    muted_until_ms: int | None
    actor: str | None
    record_ids: list[list[Any]]  # [key, ts_ms] pairs
    raw_ids: list[int]


class ActionRow(TypedDict):
    id: int
    ts_ms: int
    flow: str | None
    source: str | None
    action: str
    actor: str  # auto | operator:<name> | the control's actor
    reason: str
    outcome: str  # ok | failed | skipped
    duration_ms: float | None
    detail: dict[str, Any] | None


class QuarantinedRow(TypedDict):
    id: int
    flow: str
    source: str
    raw_id: int
    item: int  # index in the payload; -1: the whole payload
    stage: str
    reason: str
    message: str
    record: Any
    created_ms: int
    state: str  # open | replayed
    replayed_ms: int | None


class RunRow(TypedDict):
    id: int
    flow: str
    trigger: str
    started_ms: int
    finished_ms: int | None
    status: str  # running | ok | partial | failed
    stats: RunSummaryDict | None  # None while running
    error: str | None


class LatestSummary(TypedDict):
    """``protocol.latest_summary``: a flow's latest values without the values."""

    keys: int
    newest_ms: int | None
    quality: list[float]  # each key's, oldest value first


# ---------------------------------------------------------------- viewer snapshot


class ViewerFlow(FlowSnapshot):
    """A flow as viewers get it: the engine's picture and what its configuration says
    (``LocalControl.snapshot``); the ``flows`` channel's summaries."""

    description: str
    freshness_s: float | None  # the freshness target (None: a historical flow)
    availability_target: float
    metrics: list[str]
    key_field: str
    schedule: str  # "every 10s" | "cron <expr>"


class ViewerSnapshot(TypedDict):
    """``Control.snapshot()``: the engine snapshot completed from the store, what the
    console renders and the feed's channel snapshots are cut from."""

    ts: float
    flows: dict[str, ViewerFlow]
    caches: CacheSnapshot
    series_owed: SeriesOwed
    storage: StorageSnapshot
    cluster: ClusterSnapshot | None  # this node and the cluster's (None: not in a cluster)
    issues: list[IssueRow]  # open, acknowledged and muted
    actions: list[ActionRow]
    quarantine: list[QuarantinedRow]  # open
    latest: dict[str, list[LatestRow]]  # only the flows asked for (trim_snapshot)
    latest_summary: dict[str, LatestSummary]  # every flow
    runs: list[RunRow]
    store_error: str | None  # None: every part read from the store is current
    connection: str  # "local", or the feed's URL for a remote control


class ActionResult(TypedDict):
    """``Control.act()``: what an operator action did (the feed's ``result`` of an action)."""

    ok: bool
    message: str  # one line, also the recovery action's reason
    run: NotRequired[RunSummaryDict]  # run_now, replay_*
    issue: NotRequired[IssueRow]  # ack_issue, resolve_issue, mute_issue
    counts: NotRequired[dict[str, int]]  # purge_cache: entries dropped by layer


# ---------------------------------------------------------------- hub events


class HubEvent(TypedDict):
    """``Event.as_dict()``: what the hub hands to subscribers and the feed routes."""

    type: str  # a key of EVENT_DATA
    ts: float
    flow: str | None
    seq: int
    data: dict[str, Any]  # shaped as EVENT_DATA[type]


class RunStartedData(TypedDict):
    run_id: int | None
    trigger: str


class FetchData(TypedDict):
    source: str
    ok: bool
    latency_ms: NotRequired[float]  # ok
    payloads: NotRequired[int]  # ok
    bytes: NotRequired[int]  # ok
    error: NotRequired[str]  # failed
    kind: NotRequired[str]  # failed: timeout | http | connect | ...


class IssueData(TypedDict):
    kind: str
    severity: str
    title: str
    key: str | None
    source: str | None


class IssueStateData(TypedDict):
    id: int
    state: str
    actor: str
    title: str


class QuarantineData(TypedDict):
    source: str
    raw_id: int
    item: int
    stage: str
    reason: str
    message: str  # at most 300 characters


class ActionData(TypedDict):
    action: str
    actor: str
    reason: str
    outcome: str
    source: str | None


class RecordsData(TypedDict):
    count: int  # records the run stored
    latest: list[RecordValue]


class LogData(TypedDict):
    message: str


class FlowStateData(TypedDict):
    state: str
    stale: NotRequired[bool]  # an incident began (True) or ended (False)


class BreakerData(TypedDict):
    source: str
    state: str
    before: str


class CacheStatsData(TypedDict):
    layers: dict[str, CacheLayer]
    point: CachePoint


class CacheInvalidateData(TypedDict):
    keys: list[str] | None  # at most 20 of them; None: every key of the flow (or flows)
    n_keys: int | None
    layers: dict[str, int]  # entries dropped, by layer
    reason: str


# Every hub event type, and the shape of its data.
EVENT_DATA: dict[str, type] = {
    "run_started": RunStartedData,
    "run_finished": RunSummaryDict,
    "fetch": FetchData,
    "issue": IssueData,
    "issue_state": IssueStateData,
    "quarantine": QuarantineData,
    "action": ActionData,
    "records": RecordsData,
    "log": LogData,
    "flow_state": FlowStateData,
    "breaker": BreakerData,
    "cache_stats": CacheStatsData,
    "cache_invalidate": CacheInvalidateData,
}

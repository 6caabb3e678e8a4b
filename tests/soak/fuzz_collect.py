"""atheris (libFuzzer) target for the collect path: any bytes, as a payload of any of the
bundled demo's sources, through ``StageChain.collect`` and ``refine`` (parse, field mapping,
timestamps, validation, units, derived fields, enrichment, quality).

    .venv/bin/python tests/soak/fuzz_collect.py [CORPUS_DIR] -max_total_time=600

The first byte picks the source, the rest is its body. Any exception escaping the stages
is a crash (libFuzzer stops and writes the input to ``crash-<sha1>``); bad input must end
in quarantine. With an empty corpus folder, it is seeded with one good payload of each
source. CI runs it for a bounded time (tests/e2e/test_fuzz_atheris.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["flowdeck.pipeline"]):
    from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
    from flowdeck.pipeline.stages.chain import StageChain
    from flowdeck.storage.model import RawDraft

NOW = 1_795_521_630_000  # 2026-11-24T12:00:30Z
CONFIG = load_config(BUNDLED_CONFIG)
SOURCES = [(flow, src.name) for flow, f in CONFIG.flows.items() for src in f.sources]
CHAINS: dict[str, StageChain] = {}
RUNS = [0]

SEEDS = {
    "metnet": b'{"type":"FeatureCollection","features":[{"type":"Feature","properties":'
              b'{"stationId":"KDEN","timestamp":"2026-11-24T11:59:00Z","temperature":'
              b'{"value":50.1},"barometricPressure":{"value":29.9},"windSpeed":{"value":4}}}]}',
    "airnet": b'{"columns":["site","epoch","t_c","p_hpa","wind_ms"],'
              b'"rows":[["KSEA",1795521540,10.5,1012.0,3.2]]}',
    "skyobs": b"station,observed_at,temp_c,pressure_hpa,wind_kmh\n"
              b"EGLL,2026-11-24 11:59:00,8.5,1001.0,12\n",
    "fxquote": b'{"quotes":[{"pair":"EURUSD","time":"2026-11-24T11:59:00Z","rate":1.08}]}',
    "ecbx": b"symbol,timestamp,price\nUSD/EUR,1795521540000,0.925\n",
    "slowfx": b'{"data":{"columns":["sym","t","px"],"rows":[["GBPUSD",'
              b'"2026-11-24T11:57:00Z",1.27]]}}',
}


def one_input(data: bytes) -> None:
    if not data:
        return
    flow, source = SOURCES[data[0] % len(SOURCES)]
    RUNS[0] += 1
    if RUNS[0] % 1000 == 1:  # fresh chains now and then: duplicate memory starts over
        CHAINS.update({f: StageChain(f, c, CONFIG) for f, c in CONFIG.flows.items()})
    chain = CHAINS[flow]
    batch, _ = chain.collect(RawDraft(source, data[1:], NOW, None, 200, False, raw_id=1), NOW)
    chain.refine(batch, NOW)


def seed(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for i, (_, source) in enumerate(SOURCES):
        if source in SEEDS:
            (corpus / f"seed-{source}").write_bytes(bytes([i]) + SEEDS[source])


if __name__ == "__main__":
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed(Path(dirs[0]))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

"""Tests for flowdeck.pipeline.demo.corpus: the seeded, labelled detection corpus."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from flowdeck.pipeline.demo.corpus import PROBATION, WINDOW_SHARE, main, write_corpus
from flowdeck.pipeline.evaluation import find_series, load_labels, read_series


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, 5)
    return out


def test_corpus_files_and_labels_match(corpus: Path) -> None:
    files = [name for name, _ in find_series(corpus)]
    labels = load_labels(corpus / "labels.json")
    assert len(files) >= 30
    assert sorted(labels) == files
    assert sum(not windows for windows in labels.values()) >= 5  # series with no anomaly
    assert sum(len(windows) for windows in labels.values()) >= 30


def test_series_vary_in_length_spacing_and_kind(corpus: Path) -> None:
    lengths, spacings, irregular, gaps, integer = [], set(), 0, 0, 0
    for name, path in find_series(corpus):
        series = read_series(path, name)
        assert re.match(r"timestamp,value\n2014-0[67]-\d\d \d\d:\d\d:\d\d,", path.read_text())
        ts = series.timestamps
        assert ts == sorted(ts)
        steps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        typical = sorted(steps)[len(steps) // 2]
        spacings.add(typical)
        irregular += len({s for s in steps}) > 20
        gaps += max(steps) >= 5 * typical
        integer += all(v == int(v) for v in series.values)
        lengths.append(len(ts))
    assert min(lengths) >= 800 and max(lengths) >= 15_000 and max(lengths) <= 20_000
    assert min(spacings) <= 61.0 and max(spacings) >= 3500.0  # 1 minute to 1 hour
    assert irregular >= 2 and gaps >= 3 and integer >= 3


def test_windows_are_about_a_tenth_after_probation_and_disjoint(corpus: Path) -> None:
    labels = load_labels(corpus / "labels.json")
    for name, path in find_series(corpus):
        windows = labels[name]
        if not windows:
            continue
        ts = read_series(path, name).timestamps
        span = ts[-1] - ts[0]
        assert windows[0][0] >= ts[int(PROBATION * len(ts))], name
        assert windows[-1][1] <= ts[-1]
        for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
            assert end < start, name
        share = sum(b - a for a, b in windows) / span
        assert 0.5 * WINDOW_SHARE <= share <= 1.5 * WINDOW_SHARE, (name, share)


def test_labels_use_the_labelled_stream_format(corpus: Path) -> None:
    raw = json.loads((corpus / "labels.json").read_text())
    start, end = next(w for windows in raw.values() for w in windows)
    assert start.endswith(".000000") and len(start) == len("2014-07-01 00:00:00.000000")


def test_same_seed_same_bytes_other_seed_other_series(tmp_path: Path, corpus: Path) -> None:
    main([str(tmp_path / "again"), "--seed", "5"])
    for name, path in find_series(corpus):
        assert (tmp_path / "again" / name).read_bytes() == path.read_bytes(), name
    write_corpus(tmp_path / "other", 6)
    name = find_series(corpus)[0][0]
    assert (tmp_path / "other" / name).read_bytes() != (corpus / name).read_bytes()


def test_the_bundled_corpus_is_seed_one(tmp_path: Path) -> None:
    bundled = resources.files("flowdeck.sample_data") / "detection"
    write_corpus(tmp_path, 1)
    names = [name for name, _ in find_series(tmp_path)]
    assert (bundled / "labels.json").read_bytes() == (tmp_path / "labels.json").read_bytes()
    for name in names:
        assert (bundled / name).read_bytes() == (tmp_path / name).read_bytes(), name

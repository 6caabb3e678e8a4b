"""Config: good files load, broken ones are refused with file:line: field: problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowdeck.console.cli import main
from flowdeck.pipeline.config import (
    BUNDLED_CONFIG,
    ConfigError,
    load_config,
    parse_config,
    parse_size,
)
from flowdeck.pipeline.core.durations import parse_duration

HERE = Path(__file__).parents[1] / "support" / "configs"


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [str(p) for p in exc.value.problems]


def test_bundled_demo_config_loads():
    cfg = load_config(BUNDLED_CONFIG)
    assert set(cfg.flows) == {"weather", "fx"}
    weather = cfg.flows["weather"]
    assert [s.name for s in weather.sources] == ["metnet", "airnet", "skyobs"]
    assert weather.schedule.every == 10
    assert weather.freshness == 180
    assert weather.resolve.tolerance["temperature"] == 1.5
    assert "temperature" in weather.metrics() and "temperature_f" in weather.metrics()
    assert "station" not in weather.metrics()


def test_structural_problems_have_file_line_and_field():
    out = problems(HERE / "broken.yaml")
    f = str(HERE / "broken.yaml")
    assert f"{f}:3: flows.weather.schedule.every: expected a duration like '10s', '2m' or '1h', got '10x'" in out
    assert f"{f}:11: flows.weather.sources[0].priorty: unknown key (check the spelling)" in out


def test_semantic_problems_are_all_reported_with_lines():
    out = problems(HERE / "semantic.yaml")
    f = str(HERE / "semantic.yaml")
    joined = "\n".join(out)
    assert f"{f}:3: flows.weather.key: 'stationid' is not one of the flow's fields" in out
    assert f"{f}:8: flows.weather.sources[0].fields.wind: 'wind' is not one of the flow's fields" in out
    assert f"{f}:9: flows.weather.sources[0].units.temp:" in joined  # mph -> degC
    assert "different dimensions" in joined or "cannot convert" in joined
    assert f"{f}:14: flows.weather.derive.feels: bad expression:" in joined
    assert f"{f}:15: flows.weather.derive.dew: unknown field(s): humidity" in out
    assert f"{f}:17: flows.weather.enrich[0].table: no such file:" in joined


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(ConfigError) as exc:
        parse_config("flows:\n  a: [1, 2\n  b: 3\n", "x.yaml")
    p = exc.value.problems[0]
    assert p.file == "x.yaml" and p.line is not None and "YAML syntax" in p.message


def test_duplicate_keys_are_refused():
    with pytest.raises(ConfigError) as exc:
        parse_config("flows: {}\nflows: {}\n", "d.yaml")
    assert str(exc.value.problems[0]) == "d.yaml:2: flows: duplicate key"


def test_yaml_11_booleans_do_not_eat_keys():
    # `on:` is a boolean in YAML 1.1; enrich specs use it as a key.
    text = (BUNDLED_CONFIG.read_text())
    cfg = parse_config(text, str(BUNDLED_CONFIG))
    assert cfg.flows["weather"].enrich[0].on == "station"


def test_config_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = BUNDLED_CONFIG.read_text().replace(
        'temperature_f: "round(temperature * 1.8 + 32, 1)"',
        f'temperature_f: "__import__(\'pathlib\').Path(\'{marker}\').touch()"')
    with pytest.raises(ConfigError) as exc:
        parse_config(text, str(BUNDLED_CONFIG))
    assert "derive.temperature_f: bad expression" in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("2m", 120), ("1h", 3600), (5, 5),
                                          ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_sizes():
    assert parse_size("16MiB") == 16 * 2**20
    assert parse_size("500KB") == 500_000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_check_exit_codes(capsys):
    assert main(["check", str(BUNDLED_CONFIG)]) == 0
    assert "ok (2 flows, 6 sources)" in capsys.readouterr().out
    assert main(["check", str(HERE / "broken.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith(str(HERE / "broken.yaml") + ":") for line in err)
    assert len(err) >= 2


def test_cli_check_missing_file(capsys):
    assert main(["check", "/nonexistent/flows.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "/nonexistent/flows.yaml: cannot read: No such file or directory"


DETECT_FLOW = """\
flows:
  w:
    key: station
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}}
    fields:
      station: {type: str}
      temperature: {}
    detect:
"""


def test_detect_defaults_are_the_calibrated_detectors():
    from flowdeck.pipeline.detectors import DetectorSettings
    from flowdeck.pipeline.stages.detect import detector_settings

    cfg = parse_config(DETECT_FLOW + "      - {metric: temperature}\n", "d.yaml")
    (spec,) = cfg.flows["w"].detect
    assert spec.methods == ["robust_z", "rate", "seasonal", "level_shift", "flatline"]
    assert (spec.window, spec.threshold, spec.min_history, spec.season) == (120, 4.0, 10, None)
    assert (spec.calibrate, spec.flag_probability, spec.calibration_window, spec.warmup,
            spec.refractory) == (True, 1e-4, 1000, 150, 100)
    assert (spec.cusum_k, spec.cusum_h, spec.ewma_alpha, spec.rate_threshold) == (
        0.5, 30.0, 0.1, None)
    assert detector_settings(spec) == DetectorSettings()  # the detectors' own defaults


def test_detect_settings_are_read_and_checked_with_lines():
    from flowdeck.pipeline.stages.detect import detector_settings

    ok = parse_config(DETECT_FLOW + "      - {metric: temperature, methods: [ewma, flatline],"
                      " season: 1d, calibrate: false, threshold: 3, warmup: 0,"
                      " rate_threshold: 0.5}\n", "d.yaml")
    s = detector_settings(ok.flows["w"].detect[0])
    assert (s.methods, s.season, s.calibrate, s.z_threshold, s.warmup, s.rate_threshold) == (
        ("ewma", "flatline"), 86400.0, False, 3.0, 0, 0.5)
    bad = DETECT_FLOW + (
        "      - metric: temperature\n"          # line 10
        "        methods: [robust_z, cusum]\n"    # 11
        "        flag_probability: 1\n"           # 12
        "        calibration_window: 5\n"         # 13
        "      - metric: temperature\n"           # 14
        "        methods: [rate, rate]\n"         # 15
        "        warmup: 500\n"                   # 16
        "        calibration_window: 200\n")      # 17
    with pytest.raises(ConfigError) as exc:
        parse_config(bad, "d.yaml")
    out = [str(p) for p in exc.value.problems]
    assert any(p.startswith("d.yaml:11: flows.w.detect[0].methods[1]: Input should be") for p in out)
    assert any(p.startswith("d.yaml:12: flows.w.detect[0].flag_probability: Input should be less")
               for p in out)
    assert any(p.startswith("d.yaml:13: flows.w.detect[0].calibration_window: Input should be")
               for p in out)
    assert "d.yaml:15: flows.w.detect[1].methods: duplicate methods: rate" in out
    with pytest.raises(ConfigError) as exc:
        parse_config(DETECT_FLOW + "      - metric: temperature\n        warmup: 500\n"
                     "        calibration_window: 200\n", "d.yaml")
    assert [str(p) for p in exc.value.problems] == [
        "d.yaml:11: flows.w.detect[0].warmup: must not exceed calibration_window (200)"]


def test_anomaly_reason_is_a_reserved_field_name():
    text = DETECT_FLOW.replace("      temperature: {}\n",
                               "      temperature: {}\n      anomaly_reason: {type: str}\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(text + "      - {metric: temperature}\n", "d.yaml")
    assert [str(p) for p in exc.value.problems] == [
        "d.yaml:9: flows.w.fields.anomaly_reason: 'anomaly_reason' is reserved: flagged records "
        "carry their anomaly reason under it"]

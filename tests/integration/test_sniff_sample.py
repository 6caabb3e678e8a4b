"""`flowdeck sniff` on every real-shapes payload writes a config that `flowdeck check`
accepts and `flowdeck daemon --once` loads (records stored, not all quarantined);
`flowdeck check --sample` is a dry run that warns about field paths matching nothing."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from flowdeck.console.cli import main
from flowdeck.storage.store import Store

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "real_shapes"
SHAPES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())


def payload_of(shape: str) -> Path:
    # the first payload of the shape (a shape may have one per source)
    return sorted(p for p in (CORPUS / shape).iterdir()
                  if p.name not in ("config.yaml", "expected.yaml"))[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_sniffed_config_passes_check_and_loads_its_sample(shape, tmp_path, capsys):
    sample = tmp_path / "data" / payload_of(shape).name
    sample.parent.mkdir()
    shutil.copy(payload_of(shape), sample)
    config = tmp_path / "flows" / "sniffed.yaml"
    config.parent.mkdir()
    assert main(["sniff", str(sample), "--flow", "sniffed", "-o", str(config)]) == 0
    text = config.read_text(encoding="utf-8")
    assert "# Written by `flowdeck sniff`" in text
    assert yaml.safe_load(text)["flows"]["sniffed"]["sources"][0]["path"] == \
        "../data/" + sample.name  # relative to the config's folder
    assert main(["check", str(config)]) == 0, capsys.readouterr().err
    db = f"sqlite:///{tmp_path / 'sniff.db'}"
    capsys.readouterr()
    assert main(["daemon", "--once", "--json", "--config", str(config), "--db", db]) == 0
    store = Store(db)
    try:
        stored = store.count("records", flow="sniffed")
        quarantined = store.count("quarantine", flow="sniffed")
    finally:
        store.close()
    assert stored > 0 and stored >= quarantined, (stored, quarantined, text)


def test_sniff_reads_a_url_and_prints_the_flow(capsys):
    body = payload_of("xml_reference_rates").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/stats/eurofxref-daily.xml"
        assert main(["sniff", url]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = yaml.safe_load(capsys.readouterr().out)
    flow = out["flows"]["eurofxref_daily"]
    src = flow["sources"][0]
    assert (src["kind"], src["url"], src["format"]) == ("http", url, "xml")
    assert src["records"] == "Envelope.Cube.Cube.Cube"
    assert src["fields"] == {"ts": "../@time", "currency": "@currency", "rate": "@rate"}
    assert flow["key"] == "currency"


def test_sniff_picks_units_from_unit_codes_beside_values(tmp_path, capsys):
    # observations in the style of a national weather service: {value, unitCode} pairs
    obs = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"https://api.example/stations/KCNK/observations/{t}",
         "properties": {"stationId": "KCNK", "timestamp": f"2024-03-01T{t}:00+00:00",
                        "temperature": {"unitCode": "wmoUnit:degC", "value": v},
                        "windSpeed": {"unitCode": "wmoUnit:km_h-1", "value": w}}}
        for t, v, w in (("01:00", 3.5, 18.0), ("00:00", 4.0, 7.2))]}
    sample = tmp_path / "obs.json"
    sample.write_text(json.dumps(obs), encoding="utf-8")
    assert main(["sniff", str(sample)]) == 0
    flow = yaml.safe_load(capsys.readouterr().out)["flows"]["obs"]
    src = flow["sources"][0]
    assert src["format"] == "geojson" and flow["key"] == "stationid"
    assert src["fields"]["temperature"] == "temperature.value"
    assert src["units"]["temperature"] == {"from": "temperature.unitCode"}
    assert flow["fields"]["temperature"]["unit"] == "degC"
    assert flow["fields"]["windspeed"]["unit"] == "km * h**-1"


def test_check_sample_is_a_dry_run_and_warns_about_unmatched_paths(tmp_path, capsys):
    folder = tmp_path / "tides"
    shutil.copytree(CORPUS / "csv_padded_headers", folder)
    config = folder / "config.yaml"
    text = config.read_text(encoding="utf-8").replace("level: Water Level",
                                                      'level: " Water Level"')
    config.write_text(text, encoding="utf-8")
    sample = folder / "water_level.csv"
    assert main(["check", str(config), "--sample", str(sample), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert ("fields.level: path ' Water Level' matches nothing in the sample; available "
            "names: 'Station ID', 'Date Time', 'Water Level', 'Sigma', 'Quality'") in out
    assert "4 items -> 4 records, 0 quarantined (dry run, nothing written)" in out
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("  {")]
    assert len(shown) == 2
    assert shown[0]["key"] == "8454000" and shown[0]["ts"] == "2024-03-01T00:00:00Z"
    assert shown[0]["data"]["sigma"] == pytest.approx(0.003 * 0.3048, abs=1e-12)
    assert shown[0]["data"]["level"] is None  # the path matched nothing
    assert not list(folder.glob("*.db"))


def test_check_sample_shows_quarantine_and_needs_a_source_when_ambiguous(tmp_path, capsys):
    folder = tmp_path / "melt"
    shutil.copytree(CORPUS / "melt_wide_columns", folder)
    config, sample = folder / "config.yaml", folder / "multimodel.json"
    assert main(["check", str(config), "--sample", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "6 items -> 5 records, 1 quarantined" in out
    assert "item 4: validate/invalid: tmax: Field required" in out
    assert main(["check", str(config), "--sample", str(sample), "--source", "nope"]) == 2
    assert "no source 'nope' (sources: multimodel)" in capsys.readouterr().err

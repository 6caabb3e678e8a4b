"""A file source remembers the files it has read (so an unchanged one is not read again)
only while they are there: a drop folder cleaned as it goes does not grow it."""

from __future__ import annotations

import asyncio
import textwrap

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.sources.file import FileSource


def test_files_removed_are_forgotten_and_unchanged_ones_not_read_again(tmp_path):
    cfg = parse_config(textwrap.dedent(f"""
        flows:
          w:
            key: s
            sources:
              - {{name: a, kind: file, path: "{tmp_path}/*.jsonl", format: jsonl,
                  fields: {{s: s, ts: t}}, timestamp: {{format: epoch_ms}}}}
            fields:
              s: {{type: str}}
        """), "<config>")
    src = cfg.flows["w"].sources[0]
    fs = FileSource(src, f"{tmp_path}/*.jsonl")
    read = []
    for i in range(200):  # one new file a scan; files older than three scans removed
        (tmp_path / f"b{i:04d}.jsonl").write_text(f'{{"s": "k", "t": {i}}}')
        if i >= 3:
            (tmp_path / f"b{i - 3:04d}.jsonl").unlink()
        read.append([p.origin for p in asyncio.run(fs.fetch())])
    assert all(len(r) == 1 for r in read)  # only the new file each time
    assert read[-1] == [str(tmp_path / "b0199.jsonl")]
    assert sorted(fs.seen) == [str(tmp_path / f"b{i:04d}.jsonl") for i in range(197, 200)]
    (tmp_path / "b0199.jsonl").write_text('{"s": "k", "t": 1000}')  # changed: read again
    assert [p.origin for p in asyncio.run(fs.fetch())] == [str(tmp_path / "b0199.jsonl")]

"""docs/architecture.md is the map of the code: it names every module of console/,
pipeline/ and storage/ once, and no module that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTED = re.compile(r"^((?:console|pipeline|storage)/\S+\.py)\b", re.M)


def test_the_architecture_doc_lists_exactly_the_modules_in_the_tree():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    listed = LISTED.findall(doc)
    on_disk = sorted(
        str(p.relative_to(ROOT)) for top in ("console", "pipeline", "storage")
        for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(set(listed)) == sorted(listed), "a module is listed twice"
    missing = sorted(set(on_disk) - set(listed))
    stale = sorted(set(listed) - set(on_disk))
    assert not missing and not stale, f"not in docs/architecture.md: {missing}; gone: {stale}"

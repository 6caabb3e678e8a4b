"""Collect's field mapping gives what the comprehension it replaces gives, for
any field names (quotes, backslashes, newlines, unicode) and any item."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.stages.collect import _mapper

names = st.text(max_size=6) | st.sampled_from(["'", '"', "\\", "\n", "get", "item", "{}", "é"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, names, max_size=6),
       st.dictionaries(names, st.none() | st.integers() | st.text(max_size=3), max_size=6))
def test_mapping_matches_the_comprehension(fields, item):
    pairs = list(fields.items())
    expected = {target: item.get(key) for target, key in pairs}
    got = _mapper(pairs)(item)
    assert got == expected
    assert list(got) == list(expected)  # the same key order

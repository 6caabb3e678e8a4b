"""XML payloads: parsed with defusedxml, records located by an element path, each record
element turned into a dict.

Hostile XML is refused before any element is built: a DTD (and so every entity
declaration, internal or external — "billion laughs", XXE) gives a
:class:`~flowdeck.pipeline.payload.PayloadError` with reason ``"xml_forbidden"``.

An element becomes a :class:`~flowdeck.pipeline.payload.Node` (a dict that knows its
parent element, so field paths can say ``../@time``): attributes as ``@name``, child
elements by local name (repeated children -> a list), text as ``#text``; an element with
only text (no attributes, no children) becomes its text, an empty one ``None``.
Namespaces are ignored in keys (local names only); a records path segment may say
``prefix:name`` to match one namespace, with ``prefix`` declared in the source's
``namespaces``.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, ParseError

from flowdeck.pipeline.payload import Node, PayloadError

__all__ = ["locate_xml", "parse_xml"]


def _split(tag: str) -> tuple[str | None, str]:
    """'{uri}local' -> ('uri', 'local'); 'local' -> (None, 'local')."""
    if tag[:1] == "{":
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return None, tag


def parse_xml(text: str) -> Element:
    """The document element of ``text``; PayloadError for hostile or malformed XML."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        kind = type(exc).__name__.replace("Forbidden", "").lower() or "construct"
        raise PayloadError("xml_forbidden", f"XML refused: it declares a {kind} "
                           f"(DTDs and entities are not accepted): {exc}") from None
    except ParseError as exc:
        raise PayloadError("malformed", f"malformed XML: {exc}") from None
    _uri, local = _split(root.tag)
    if local.lower() == "html":
        raise PayloadError("not_xml", "expected XML records, got an HTML page")
    return root


def _to_value(el: Element, parent: Node | None, depth: int, max_depth: int) -> Any:
    if depth > max_depth:
        raise PayloadError("too_deep", f"XML is nested more than {max_depth} levels deep")
    text = (el.text or "").strip()
    if not el.attrib and len(el) == 0:
        return text or None
    node = Node()
    node.parent = parent
    for name, value in el.attrib.items():
        node["@" + _split(name)[1]] = value
    repeated: set[str] = set()
    for child in el:
        if not isinstance(child.tag, str):  # comments, processing instructions
            continue
        key = _split(child.tag)[1]
        value = _to_value(child, node, depth + 1, max_depth)
        if key in repeated:
            node[key].append(value)
        elif key in node:
            node[key] = [node[key], value]
            repeated.add(key)
        else:
            node[key] = value
    if text:
        node["#text"] = text
    return node


def element_to_node(el: Element, parent: Node | None, max_depth: int = 200) -> Node:
    """One element as a Node (always a dict, even for a text-only element)."""
    value = _to_value(el, parent, 0, max_depth)
    if isinstance(value, Node):
        return value
    node = Node()
    node.parent = parent
    if value is not None:
        node["#text"] = value
    return node


def _segment_matcher(segment: str, namespaces: dict[str, str], records: str):
    if segment == "*":
        return lambda uri, local: True
    prefix, sep, local = segment.rpartition(":")
    if sep:
        if prefix not in namespaces:
            raise ValueError(f"invalid records path {records!r}: namespace prefix {prefix!r} "
                             "is not declared in 'namespaces'")
        want = namespaces[prefix]
        return lambda uri, name: uri == want and name == local
    return lambda uri, name: name == segment


def locate_xml(root: Element, records: str | None, namespaces: dict[str, str] | None = None,
               max_depth: int = 200) -> list[Any]:
    """The record elements named by ``records`` (dotted local names from the document
    element, e.g. ``Envelope.Cube.Cube.Cube``), each a Node whose parents are Nodes too.

    Without ``records`` the children of the document element are the records.
    """
    namespaces = namespaces or {}
    if not records:
        segments = [_split(root.tag)[1], "*"]
    else:
        segments = [s[:-2] if s.endswith("[]") else s for s in records.split(".")]
        if any(not s for s in segments):
            raise ValueError(f"invalid records path {records!r}: empty segment")
    matchers = [_segment_matcher(s, namespaces, records or "") for s in segments]
    if not matchers[0](*_split(root.tag)):
        raise PayloadError("records_path", f"the document element is '{_split(root.tag)[1]}', "
                           f"not '{segments[0]}' (records path '{records}')")
    # Walk element paths; the parents of a record are built as Nodes once, shared.
    level: list[tuple[Element, Node | None]] = [(root, None)]
    for depth, match in enumerate(matchers[1:], 1):
        nxt: list[tuple[Element, Node | None]] = []
        for el, parent in level:
            node = _shallow(el, parent, match, max_depth)
            nxt.extend((child, node) for child in el
                       if isinstance(child.tag, str) and match(*_split(child.tag)))
        if not nxt:
            where = ".".join(segments[:depth])
            raise PayloadError("records_path", f"no '{segments[depth]}' element under "
                               f"'{where}' (records path '{records}')")
        level = nxt
    return [element_to_node(el, parent, max_depth) for el, parent in level]


def _shallow(el: Element, parent: Node | None, on_path, max_depth: int) -> Node:
    """An ancestor of records: its attributes, text and the children off the records path
    (``../@time``, ``$.Sender.name``); the children on it are items or ancestors of their own."""
    node = Node()
    node.parent = parent
    for name, value in el.attrib.items():
        node["@" + _split(name)[1]] = value
    for child in el:
        if isinstance(child.tag, str) and not on_path(*_split(child.tag)):
            key = _split(child.tag)[1]
            if key not in node:
                node[key] = _to_value(child, node, 1, max_depth)
    text = (el.text or "").strip()
    if text:
        node["#text"] = text
    return node

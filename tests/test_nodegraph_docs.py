"""docs/nodegraph.md against the code: the field tables and every graph path.

The field tables are generated (``python -m k8spacket.nodegraph.build``); this
test fails when the copy in the docs is stale. Every path the graph API routes
must appear in the docs' endpoint table.
"""

from __future__ import annotations

from pathlib import Path

from k8spacket.nodegraph.api import ENDPOINTS, GraphAPI
from k8spacket.nodegraph.build import fields_markdown
from k8spacket.nodegraph.local import LocalGraphStore
from k8spacket.nodegraph.sources import LocalSource

DOC = Path(__file__).resolve().parent.parent / "docs" / "nodegraph.md"


def test_field_tables_are_current() -> None:
    text = DOC.read_text()
    begin, end = "<!-- fields:begin -->\n", "<!-- fields:end -->"
    current = text[text.index(begin) + len(begin) : text.index(end)]
    assert current == fields_markdown(), (
        "stale: regenerate with python -m k8spacket.nodegraph.build"
    )


def test_every_route_is_documented() -> None:
    text = DOC.read_text()
    store = LocalGraphStore()
    routes = GraphAPI({"local": LocalSource(store)}, "local", store).routes()
    for path in routes:
        assert f"`{path}`" in text, path
    for path, _ in ENDPOINTS:
        assert f"`{path}`" in text, path

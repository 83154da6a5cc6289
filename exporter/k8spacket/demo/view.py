"""The demo's live terminal view (rich): top edges, failures, drops, the URLs to open.

:func:`render_view` turns one :class:`ViewState` (edges summed over the agents,
rates since the previous look, drop counters, URLs) into a rich renderable;
the runner refreshes it every couple of seconds inside ``rich.live.Live`` when
stdout is a terminal, and prints a one-line progress report otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from k8spacket.demo.observe import Edge

TOP = 6


@dataclass
class ViewState:
    elapsed: float = 0.0
    duration: float | None = None
    edges: list[Edge] = field(default_factory=list)
    byte_rates: dict[str, float] = field(default_factory=dict)  # edge label → bytes/s
    conn_rates: dict[str, float] = field(default_factory=dict)  # edge label → conn/s
    drops: dict[str, float] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def edge_label(e: Edge) -> str:
    return f"{e.src} → {e.dst}:{e.dst_port}"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _edges_table(title: str, edges: list[Edge], state: ViewState, by_bytes: bool) -> Table:
    t = Table(title=title, title_justify="left", expand=True, pad_edge=False)
    t.add_column("edge", overflow="fold")
    if by_bytes:
        t.add_column("bytes", justify="right")
        t.add_column("rate", justify="right")
    else:
        t.add_column("connections", justify="right")
        t.add_column("per s", justify="right")
        t.add_column("open", justify="right")
    for e in edges[:TOP]:
        label = edge_label(e)
        name = Text(label, style="red" if e.failures or e.resets else "")
        if by_bytes:
            t.add_row(
                name, human_bytes(e.bytes), human_bytes(state.byte_rates.get(label, 0)) + "/s"
            )
        else:
            t.add_row(name, f"{e.total_connections:.0f}",
                      f"{state.conn_rates.get(label, 0):.1f}", f"{e.open:.0f}")  # fmt: skip
    if not edges:
        t.add_row("(no traffic yet)", "", "") if by_bytes else t.add_row(
            "(no traffic yet)", "", "", ""
        )
    return t


def _failures_table(edges: list[Edge]) -> Table:
    t = Table(title="Failures", title_justify="left", expand=True, pad_edge=False)
    t.add_column("edge", overflow="fold")
    t.add_column("refused", justify="right")
    t.add_column("unanswered", justify="right")
    t.add_column("reset", justify="right")
    bad = [e for e in edges if e.failures or e.resets]
    for e in sorted(bad, key=lambda e: -(e.failures + e.resets))[:TOP]:
        t.add_row(Text(edge_label(e), style="red"), f"{e.connections.get('refused', 0):.0f}",
                  f"{e.connections.get('unanswered', 0):.0f}", f"{e.resets:.0f}")  # fmt: skip
    if not bad:
        t.add_row("(none yet)", "", "", "")
    return t


def render_view(state: ViewState) -> Group:
    by_conn = sorted(state.edges, key=lambda e: -e.total_connections)
    left = (
        f"{state.elapsed:.0f}s of {state.duration:.0f}s"
        if state.duration
        else f"{state.elapsed:.0f}s (Ctrl-C ends the demo and tears everything down)"
    )
    drops = ", ".join(f"{k.removeprefix('k8spacket_')}={v:.0f}" for k, v in state.drops.items())
    urls = Table.grid(padding=(0, 2))
    urls.add_column(style="bold")
    urls.add_column()
    for name, url in state.urls.items():
        urls.add_row(name, url)
    return Group(
        Panel(urls, title=f"k8spacket demo · {left}", title_align="left"),
        _edges_table("Top edges by bytes", state.edges, state, by_bytes=True),
        _edges_table("Top edges by connections", by_conn, state, by_bytes=False),
        _failures_table(state.edges),
        Text(f"drops: {drops or 'none'}", style="dim"),
        *(Text(n, style="yellow") for n in state.notes),
    )


def progress_line(state: ViewState) -> str:
    """One line for a non-terminal stdout."""
    total_b = sum(e.bytes for e in state.edges)
    total_c = sum(e.total_connections for e in state.edges)
    fails = sum(e.failures + e.resets for e in state.edges)
    return (
        f"k8spacket demo: {state.elapsed:.0f}s: {len(state.edges)} edges, "
        f"{total_c:.0f} connections, {human_bytes(total_b)}, {fails:.0f} failed or reset"
    )

"""Label policy: which labels the traffic metrics carry, and their values.

The user picks labels from a closed list (as hubble does), never free-form:

* default labels, always present, in this order: ``src_namespace``,
  ``src_workload``, ``src_kind``, ``dst_namespace``, ``dst_workload``,
  ``dst_kind``, ``dst_port``;
* opt-in labels, appended in this fixed order whatever order the user gives:
  ``src_pod``, ``dst_pod``, ``src_ip``, ``dst_ip``, ``src_port``, ``dst_country``,
  ``dst_service``;
* level ``workload`` (default) or ``pod``; ``pod`` is a shorthand that opts in
  ``src_pod`` and ``dst_pod``;
* ``hide_source_port`` (the seed's ``k8sPacket.metrics.hideSourcePort``,
  default true): while true the source port is never a label; asking for the
  ``src_port`` label at the same time is a configuration error.

Values, chosen so that an unnamed address never creates a series of its own:

* ``*_kind``: the record's kind when it is one of ``pod``, ``service``, ``node``,
  ``host``, ``external``, ``unknown``; an unnamed address that carries an
  organisation is ``external``; anything else is ``unknown``;
* ``*_workload``: the record's workload; for ``external`` peers the
  organisation; otherwise ``unknown``. Addresses never become workload values:
  ask for ``src_ip``/``dst_ip`` to see them;
* ``*_namespace``: the record's namespace, empty for cluster-scoped or unknown
  peers (an empty label value is the same as no label in PromQL);
* ``*_pod``: the record's name when its kind is ``pod``, else empty;
* ``*_ip``, ``*_port``: the addresses and ports as text; ``dst_country``: the
  ISO country code, or empty; ``dst_service``: the Service the client reached
  the server through (kube-proxy DNAT, the record's ``dst_service``), or empty.

Limits: label values are taken as they come (prometheus_client escapes them);
the series budget (:mod:`k8spacket.metrics.budget`) bounds how many distinct
label sets exist, not this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from k8spacket.flows.record import ConnectionRecord, spelled_kind, spelled_workload

DEFAULT_LABELS: tuple[str, ...] = (
    "src_namespace",
    "src_workload",
    "src_kind",
    "dst_namespace",
    "dst_workload",
    "dst_kind",
    "dst_port",
)
OPT_IN_LABELS: tuple[str, ...] = (
    "src_pod",
    "dst_pod",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_country",
    "dst_service",
)
LEVELS: tuple[str, ...] = ("workload", "pod")
#: The value a folded label takes (see :mod:`k8spacket.metrics.budget`).
OTHER = "__other__"

#: Labels that fold to ``__other__`` first when a family is over budget.
_FOLD_FIRST = frozenset({"src_workload", "dst_workload", *OPT_IN_LABELS})

LabelValues = Callable[[ConnectionRecord], tuple[str, ...]]


class LabelPolicyError(ValueError):
    """A label choice that cannot work (unknown label, level or a conflict)."""


_kind = spelled_kind
_workload = spelled_workload


def _src_part(rec: ConnectionRecord) -> tuple[str, str, str]:
    kind = _kind(rec.src_kind, rec.src_org)
    return rec.src_namespace, _workload(rec.src_workload, kind, rec.src_org), kind


def _dst_part(rec: ConnectionRecord) -> tuple[str, str, str]:
    kind = _kind(rec.dst_kind, rec.dst_org)
    return rec.dst_namespace, _workload(rec.dst_workload, kind, rec.dst_org), kind


def _opt_in_value(name: str) -> Callable[[ConnectionRecord], str]:
    if name == "src_pod":
        return lambda r: r.src_name if r.src_kind == "pod" else ""
    if name == "dst_pod":
        return lambda r: r.dst_name if r.dst_kind == "pod" else ""
    if name == "src_ip":
        return lambda r: r.src
    if name == "dst_ip":
        return lambda r: r.dst
    if name == "src_port":
        return lambda r: str(r.src_port)
    if name == "dst_country":
        return lambda r: r.dst_country
    if name == "dst_service":
        return lambda r: r.dst_service
    raise AssertionError(name)  # pragma: no cover - guarded by LabelPolicy


class LabelPolicy:
    """The label names of the traffic families and how a record maps to their values."""

    __slots__ = (
        "fold_all_mask",
        "fold_mask",
        "hide_source_port",
        "level",
        "names",
        "opt_in",
        "values",
    )

    def __init__(
        self,
        level: str = "workload",
        opt_in: Iterable[str] = (),
        *,
        hide_source_port: bool = True,
    ) -> None:
        if level not in LEVELS:
            raise LabelPolicyError(
                f"metrics label level must be one of {', '.join(LEVELS)}, got {level!r}"
            )
        chosen = set(opt_in)
        unknown = sorted(chosen - set(OPT_IN_LABELS))
        if unknown:
            raise LabelPolicyError(
                f"unknown opt-in label(s) {', '.join(unknown)}; choose from {', '.join(OPT_IN_LABELS)}"
            )
        if "src_port" in chosen and hide_source_port:
            raise LabelPolicyError(
                "the src_port label needs hideSourcePort: false (with hideSourcePort: true "
                "the source port is never a label)"
            )
        if level == "pod":
            chosen |= {"src_pod", "dst_pod"}
        self.level = level
        self.hide_source_port = hide_source_port
        self.opt_in: tuple[str, ...] = tuple(n for n in OPT_IN_LABELS if n in chosen)
        #: Label names of the traffic families, in their fixed order.
        self.names: tuple[str, ...] = DEFAULT_LABELS + self.opt_in
        #: Per position: True when the label folds to ``__other__`` at the first fold step.
        self.fold_mask: tuple[bool, ...] = tuple(n in _FOLD_FIRST for n in self.names)
        self.fold_all_mask: tuple[bool, ...] = tuple(True for _ in self.names)
        self.values: LabelValues = self._compile()

    def _compile(self) -> LabelValues:
        extras = [_opt_in_value(n) for n in self.opt_in]
        if not extras:

            def values(rec: ConnectionRecord) -> tuple[str, ...]:
                return (*_src_part(rec), *_dst_part(rec), str(rec.dst_port))

            return values

        def values_opt_in(rec: ConnectionRecord) -> tuple[str, ...]:
            return (
                *_src_part(rec),
                *_dst_part(rec),
                str(rec.dst_port),
                *[f(rec) for f in extras],
            )

        return values_opt_in

    def __repr__(self) -> str:
        return (
            f"LabelPolicy(level={self.level!r}, opt_in={self.opt_in!r}, "
            f"hide_source_port={self.hide_source_port!r})"
        )

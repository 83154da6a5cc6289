"""The Node Graph API's query string: parsed as the datasource sends it, every value checked.

The Node Graph API datasource substitutes template variables into the panel's
query and does not URL-encode them, so a regexp such as ``a+b`` arrives as is.
The query is therefore split on ``&``, each part on its first ``=``, and
percent-decoded *without* turning ``+`` into a space (``urllib.parse.unquote``,
not ``parse_qs``). ``&`` and ``#`` inside a value must be written ``%26`` and
``%23``. Grafana's ``${var:regex}`` format (``(a|b)``, escaped metacharacters,
``.*`` or a custom value for All) is a regexp like any other.

Parameters (all optional; docs/design.md, "HTTP"):

* ``stats-type``: ``connection`` (also when empty) | ``bytes`` | ``duration``;
* ``level``: ``workload`` (default) | ``pod`` | ``namespace``;
* ``source``: ``local`` | ``agents`` | ``prometheus`` (default: the setting);
* ``namespace``: a regexp matched against the whole namespace of either end;
  ``include``/``exclude``: regexps searched in the names, workloads, namespaces
  and addresses of either end (repeating one of these three ORs the values);
* ``from``/``to``: Unix milliseconds (Grafana's ``${__from}``/``${__to}``);
  default the last 15 minutes.

Any other parameter, a repeated non-regexp parameter, or a bad value raises
:class:`QueryError` naming the parameter (answered with a 400).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import unquote

STATS_TYPES: tuple[str, ...] = ("connection", "bytes", "duration")
LEVELS: tuple[str, ...] = ("workload", "pod", "namespace")
SOURCES: tuple[str, ...] = ("local", "agents", "prometheus")
PARAMETERS: tuple[str, ...] = (
    "stats-type",
    "level",
    "source",
    "namespace",
    "include",
    "exclude",
    "from",
    "to",
)
DEFAULT_WINDOW = 15 * 60.0
#: the longest window a query may ask for (seconds)
MAX_WINDOW = 31 * 86400.0
#: Unix milliseconds accepted for ``from``/``to``: 2001-09-09 … 2286-11-20. A value
#: below that is almost certainly seconds, not milliseconds.
MIN_MILLIS, MAX_MILLIS = 1e12, 1e13
_REGEXP_PARAMS = frozenset({"namespace", "include", "exclude"})


class QueryError(ValueError):
    """A bad query parameter: ``parameter`` names it, the message says why."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.reason = message

    def as_json(self) -> dict[str, str]:
        return {"error": str(self), "parameter": self.parameter}


@dataclass(frozen=True)
class GraphQuery:
    """A checked query (times in Unix seconds)."""

    stats_type: str = "connection"
    level: str = "workload"
    source: str | None = None
    namespace: re.Pattern[str] | None = None
    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None
    since: float = 0.0
    until: float = 0.0

    @property
    def seconds(self) -> float:
        return self.until - self.since


def split_query(raw: str) -> dict[str, list[str]]:
    """``a=1&b=x+y`` → ``{"a": ["1"], "b": ["x+y"]}`` (percent-decoded, ``+`` kept)."""
    out: dict[str, list[str]] = {}
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        out.setdefault(unquote(name), []).append(unquote(value))
    return out


def _one(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name, [])
    if len(values) > 1:
        raise QueryError(name, f"given {len(values)} times; give it once")
    return values[0].strip() if values else ""


def _choice(params: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> str:
    value = _one(params, name)
    if value and value not in allowed:
        raise QueryError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _regexp(params: dict[str, list[str]], name: str) -> re.Pattern[str] | None:
    values = [v for v in params.get(name, []) if v]
    if not values:
        return None
    text = values[0] if len(values) == 1 else "|".join(f"(?:{v})" for v in values)
    try:
        return re.compile(text)
    except re.error as e:
        raise QueryError(name, f"bad regexp {text!r}: {e}") from None
    except (OverflowError, RecursionError):
        raise QueryError(name, f"regexp too large: {text[:80]!r}") from None


def _millis(params: dict[str, list[str]], name: str) -> float | None:
    value = _one(params, name)
    if not value:
        return None
    try:
        ms = float(value)
    except ValueError:
        raise QueryError(name, f"expected Unix milliseconds, got {value!r}") from None
    if not math.isfinite(ms) or not MIN_MILLIS <= ms <= MAX_MILLIS:
        raise QueryError(
            name,
            f"expected Unix milliseconds (13 digits, as Grafana's ${{__{name}}}), got {value!r}",
        )
    return ms / 1000.0


def parse_query(raw: str, now: float, default_window: float = DEFAULT_WINDOW) -> GraphQuery:
    """Parse and check a raw query string; ``now`` (Unix seconds) fills missing times."""
    params = split_query(raw)
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise QueryError(
            unknown[0], f"unknown parameter; the parameters are {', '.join(PARAMETERS)}"
        )
    stats_type = _choice(params, "stats-type", STATS_TYPES) or "connection"
    level = _choice(params, "level", LEVELS) or "workload"
    source = _choice(params, "source", SOURCES) or None
    regexps = {name: _regexp(params, name) for name in sorted(_REGEXP_PARAMS)}
    since, until = _millis(params, "from"), _millis(params, "to")
    if until is None:
        until = now if since is None or since < now else since + default_window
    if since is None:
        since = until - default_window
    if since >= until:
        raise QueryError("from", "must be before to")
    if until - since > MAX_WINDOW:
        raise QueryError(
            "to", f"window of {(until - since) / 86400:.1f} days is longer than 31 days"
        )
    return GraphQuery(
        stats_type=stats_type,
        level=level,
        source=source,
        namespace=regexps["namespace"],
        include=regexps["include"],
        exclude=regexps["exclude"],
        since=since,
        until=until,
    )

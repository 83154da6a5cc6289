"""Which interfaces to capture on, kept in step with the node through netlink.

Candidates (docs/design.md, "Data flow"):

* links whose peer lives in another network namespace (``IFLA_LINK_NETNSID``:
  the host side of a pod's veth, whatever the CNI calls it: ``veth*``,
  ``cali*``, ``lxc*``, ``gke*``, ``eni*``, …), plus links whose name matches
  ``include`` (regexps);
* or, for compatibility with the seed, the names printed by the
  ``interfaces.command`` shell command (comma- or space-separated);

minus names matching ``exclude`` and the never-captured ``tunl0``/``sit0``/
``ip6tnl0``/empty names. A candidate that is DOWN, has no carrier, vanished
between listing and opening, or cannot be opened is *skipped*: one log line when
its state changes, and it counts in :meth:`InterfaceWatcher.skipped_counts`
(the ``k8spacket_capture_interfaces_skipped{reason}`` gauge). Nothing here is
fatal: the upstream agent crash-looped on ``tunl0`` ("That device is not up").

The watcher listens to RTNL link events and re-lists on each burst of them
(within ``event_delay``, 0.1 s by default), plus a full resync every
``refresh_period``. On every sync it also hands the reader the addresses of
``/32`` and ``/128`` routes that point at a watched link (routed CNIs such as
Calico and Cilium route each pod that way), so those pods are known as local
before they send anything.

Netlink trouble is never fatal either: ``OSError``, pyroute2's ``NetlinkError``
and ``NetlinkDumpInterrupted`` (links changed during a dump) make the watcher
retry the sync after ``retry_delay``, and an event socket that fails (it
overflows during heavy link churn) is reopened; anything else is a bug and
goes to the supervisor (:mod:`k8spacket.supervise`), which restarts the loop.

Netlink and the command are injected (``list_links``, ``list_pod_routes``,
``run_command``) so tests can drive the logic with plain data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from k8spacket.capture.local import address_int

log = logging.getLogger(__name__)

#: names never captured, whatever the settings say (tunnels without Ethernet headers)
IGNORED_NAMES = frozenset({"", "tunl0", "sit0", "ip6tnl0", "ip6gre0", "gre0", "erspan0"})
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

SKIP_DOWN = "down"
SKIP_NO_CARRIER = "no_carrier"
SKIP_VANISHED = "vanished"
SKIP_OPEN_FAILED = "open_failed"
SKIP_IGNORED = "ignored_name"
SKIP_REASONS = (SKIP_DOWN, SKIP_NO_CARRIER, SKIP_VANISHED, SKIP_OPEN_FAILED, SKIP_IGNORED)


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """What the watcher needs to know about one network link."""

    index: int
    name: str
    up: bool
    carrier: bool
    peer_in_other_netns: bool


class RingSink(Protocol):
    """The capture reader, as the watcher uses it."""

    def attach(self, ring: Any) -> None: ...
    def detach(self, name: str) -> None: ...
    def learn(self, pairs: Iterable[tuple[int, int]]) -> None: ...


# ------------------------------------------------------------------ netlink
def netlink_links() -> list[Link]:
    """Every link of this network namespace (pyroute2, RTM_GETLINK dump)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [_link(m) for m in ipr.get_links()]


def _link(m: Any) -> Link:
    flags = int(m["flags"])
    carrier = m.get("carrier")
    return Link(
        index=int(m["index"]),
        name=str(m.get("ifname") or ""),
        up=bool(flags & IFF_UP),
        carrier=bool(carrier) if carrier is not None else bool(flags & IFF_LOWER_UP),
        peer_in_other_netns=m.get("link_netnsid") is not None,
    )


def netlink_pod_routes() -> list[tuple[str, int]]:
    """(address, ifindex) of every host route (/32, /128) with an output interface."""
    from pyroute2 import IPRoute

    out: list[tuple[str, int]] = []
    with IPRoute() as ipr:
        for family, full in ((2, 32), (10, 128)):
            for r in ipr.get_routes(family=family, table=254):
                dst, oif = r.get("dst"), r.get("oif")
                if dst and oif and r["dst_len"] == full:
                    out.append((str(dst), int(oif)))
    return out


def shell_command(command: str, timeout: float = 10.0) -> str:
    """Run the seed's ``interfaces.command`` through ``/bin/sh``; its stdout."""
    r = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if r.returncode != 0:
        raise OSError(f"exit status {r.returncode}: {r.stderr.strip()[:200]}")
    return r.stdout


def parse_command_output(text: str) -> list[str]:
    """Interface names from the command's output: comma, space or newline separated."""
    return [n for n in re.split(r"[\s,]+", text.strip()) if n]


# ------------------------------------------------------------------ policy
class InterfaceFilter:
    """Candidate selection from include/exclude regexps (names are matched with ``search``)."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = [re.compile(p) for p in include]
        self.exclude = [re.compile(p) for p in exclude]

    def excluded(self, name: str) -> bool:
        return any(p.search(name) for p in self.exclude)

    def candidate(self, link: Link) -> bool:
        if self.excluded(link.name):
            return False
        return link.peer_in_other_netns or any(p.search(link.name) for p in self.include)


def skip_reason(link: Link | None) -> str | None:
    """Why a candidate cannot be captured now (None: it can)."""
    if link is None:
        return SKIP_VANISHED
    if link.name in IGNORED_NAMES:
        return SKIP_IGNORED
    if not link.up:
        return SKIP_DOWN
    if not link.carrier:
        return SKIP_NO_CARRIER
    return None


# ----------------------------------------------------------------- watcher
class InterfaceWatcher:
    """Keeps one capture ring open per usable candidate interface."""

    def __init__(
        self,
        reader: RingSink,
        open_ring: Callable[[str], Any],
        *,
        interface_filter: InterfaceFilter | None = None,
        command: str | None = None,
        refresh_period: float = 10.0,
        event_delay: float = 0.1,
        list_links: Callable[[], list[Link]] = netlink_links,
        list_pod_routes: Callable[[], list[tuple[str, int]]] | None = netlink_pod_routes,
        run_command: Callable[[str], str] = shell_command,
        clock: Callable[[], float] = time.monotonic,
        retry_delay: float = 0.5,
    ) -> None:
        self.reader = reader
        self.open_ring = open_ring
        self.filter = interface_filter or InterfaceFilter()
        self.command = command or None
        self.refresh_period = refresh_period
        self.event_delay = event_delay
        self.list_links = list_links
        self.list_pod_routes = list_pod_routes
        self.run_command = run_command
        self.clock = clock
        self.retry_delay = retry_delay
        #: name → ifindex of interfaces with an open ring
        self.open: dict[str, int] = {}
        #: name → skip reason of candidates not captured
        self.skipped: dict[str, str] = {}
        self.syncs = 0
        self.command_errors = 0
        #: syncs that failed with a netlink error (retried after ``retry_delay``)
        self.sync_errors = 0
        #: times the RTNL event socket failed and was reopened
        self.event_errors = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    # -------------------------------------------------------------- stats
    def skipped_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for reason in list(self.skipped.values()):
            counts[reason] += 1
        return counts

    # ------------------------------------------------------------- syncing
    def request_sync(self, name: str = "", err: int = 0) -> None:
        """Ask for a resync soon (from any thread; e.g. a ring reported an error)."""
        self._wake.set()

    def _candidates(self, links: dict[str, Link]) -> list[str] | None:
        if self.command is None:
            return [n for n, link in links.items() if self.filter.candidate(link)]
        try:
            names = parse_command_output(self.run_command(self.command))
        except (OSError, subprocess.SubprocessError) as e:
            self.command_errors += 1
            log.warning("interfaces command failed (keeping the current interfaces): %s", e)
            return None
        return [n for n in dict.fromkeys(names) if not self.filter.excluded(n)]

    def sync(self) -> None:
        """List links, open rings on new usable candidates, close rings on the rest."""
        with self._lock:
            self.syncs += 1
            links = {link.name: link for link in self.list_links()}
            names = self._candidates(links)
            if names is None:
                return
            want: dict[str, int] = {}
            skipped: dict[str, str] = {}
            for name in names:
                link = links.get(name)
                reason = skip_reason(link) if name not in IGNORED_NAMES else SKIP_IGNORED
                if reason is None and link is not None:
                    want[name] = link.index
                else:
                    skipped[name] = reason or SKIP_VANISHED
            for name, index in list(self.open.items()):
                if want.get(name) != index:
                    self.reader.detach(name)
                    del self.open[name]
                    log.info("capture stopped on %s", name)
            for name, index in want.items():
                if name in self.open:
                    continue
                try:
                    ring = self.open_ring(name)
                except OSError as e:
                    skipped[name] = SKIP_OPEN_FAILED if e.errno != 19 else SKIP_VANISHED
                    if self.skipped.get(name) != skipped[name]:
                        log.warning("interface %s skipped: %s", name, e)
                    continue
                self.reader.attach(ring)
                self.open[name] = index
                log.info("capture started on %s", name)
            for name, reason in skipped.items():
                if self.skipped.get(name) != reason and reason != SKIP_OPEN_FAILED:
                    log.warning("interface %s skipped: %s", name, reason.replace("_", " "))
            self.skipped = skipped
            self._seed_local_addresses()

    def _seed_local_addresses(self) -> None:
        if self.list_pod_routes is None or not self.open:
            return
        watched = set(self.open.values())
        try:
            routes = self.list_pod_routes()
        except netlink_errors() as e:
            log.debug("listing routes: %s", e)
            return
        pairs = [(address_int(ip), oif) for ip, oif in routes if oif in watched]
        if pairs:
            self.reader.learn(pairs)

    # ---------------------------------------------------------------- loop
    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Sync now, then on RTNL link events and every ``refresh_period`` until stopped.

        Netlink errors (``OSError``, pyroute2's ``NetlinkError`` and
        ``NetlinkDumpInterrupted``, raised when links change during a dump, and
        an event socket that overflowed during link churn) are handled here: the
        event socket is reopened and a full resync is tried again after
        ``retry_delay``. Anything else is a bug and reaches the supervisor.
        Restartable: the open rings stay in :attr:`open` across calls.
        """
        errors = netlink_errors()
        events = _open_link_events()
        next_sync = self.clock()
        try:
            while not self._stop.is_set():
                if self.clock() >= next_sync:
                    next_sync = self.clock() + self._try_sync(errors)
                timeout = max(0.0, min(next_sync - self.clock(), 0.2))
                changed = False
                if events is not None:
                    try:
                        ready, _, _ = select.select([events], [], [], timeout)
                        if ready:
                            _drain_events(events)
                            changed = True
                    except errors as e:
                        events = self._reopen_events(events, e)
                        changed = True
                else:
                    self._wake.wait(timeout)
                if self._wake.is_set():
                    self._wake.clear()
                    changed = True
                if self._stop.is_set():
                    break
                if changed:
                    # a burst of events (a pod starting makes several): wait, then list once
                    self._stop.wait(self.event_delay)
                    if events is not None:
                        try:
                            _drain_events(events)
                        except errors as e:
                            events = self._reopen_events(events, e)
                    next_sync = self.clock()
        finally:
            if events is not None:
                events.close()

    def _try_sync(self, errors: tuple[type[Exception], ...]) -> float:
        """One sync; seconds until the next (``retry_delay`` after a netlink error)."""
        try:
            self.sync()
        except errors as e:
            self.sync_errors += 1
            log.warning(
                "interface sync failed (%s: %s); retrying in %gs",
                type(e).__name__,
                e,
                self.retry_delay,
            )
            return self.retry_delay
        return self.refresh_period

    def _reopen_events(self, events: Any, e: Exception) -> Any:
        self.event_errors += 1
        log.warning(
            "RTNL event socket failed (%s: %s): reopening it, resyncing", type(e).__name__, e
        )
        with contextlib.suppress(*netlink_errors()):
            events.close()
        return _open_link_events()


def netlink_errors() -> tuple[type[Exception], ...]:
    """The exceptions a netlink call raises for reasons outside the program (not bugs)."""
    try:
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:
        return (OSError,)
    return (OSError, NetlinkError)


def _open_link_events() -> Any:
    """A netlink socket subscribed to link changes (None if netlink is unavailable)."""
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        ipr = IPRoute()
        ipr.bind(groups=RTMGRP_LINK)
        return ipr
    except netlink_errors() as e:
        log.warning("no RTNL events (periodic resync only): %s", e)
        return None


def _drain_events(ipr: Any) -> None:
    while select.select([ipr], [], [], 0)[0]:
        ipr.get()

"""conntrack messages: the tuples we send, the entries we read (real lookups: the lab)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from conftest import require, require_tool
from k8spacket.capture.conntrack import (
    CTA_STATUS,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    IPS_DST_NAT,
    NLA_F_NESTED,
    ConntrackClient,
    _attr,
    decode_entry,
    decode_tuple,
    encode_tuple,
)


@pytest.mark.parametrize(
    "t",
    [("10.244.1.5", 40000, "10.96.0.10", 80), ("fd42::5", 1, "fd42::10", 65535)],
    ids=["v4", "v6"],
)
def test_tuples_round_trip(t: tuple[str, int, str, int]) -> None:
    raw = encode_tuple(CTA_TUPLE_ORIG, t)
    length, kind = struct.unpack_from("=HH", raw)
    assert (length, kind) == (len(raw), CTA_TUPLE_ORIG | NLA_F_NESTED)
    assert decode_tuple(raw, 4, len(raw)) == t


def entry(orig: tuple[str, int, str, int], reply: tuple[str, int, str, int], status: int) -> bytes:
    return (
        encode_tuple(CTA_TUPLE_ORIG, orig)
        + encode_tuple(CTA_TUPLE_REPLY, reply)
        + _attr(CTA_STATUS, struct.pack("!I", status))
    )


def test_a_dnat_entry_says_so() -> None:
    raw = entry(("10.244.1.5", 40000, "10.96.0.10", 80), ("10.244.1.6", 8080, "10.244.1.5", 40000),
                IPS_DST_NAT)  # fmt: skip
    e = decode_entry(raw, 0, len(raw))
    assert e is not None and e.dst_nat and e.reply[:2] == ("10.244.1.6", 8080)


def test_a_plain_entry_is_not_nat() -> None:
    raw = entry(("10.244.1.5", 40000, "10.244.1.6", 80), ("10.244.1.6", 80, "10.244.1.5", 40000), 0)
    e = decode_entry(raw, 0, len(raw))
    assert e is not None and not e.dst_nat


def test_truncated_input_is_no_entry() -> None:
    raw = entry(("10.244.1.5", 1, "10.244.1.6", 2), ("10.244.1.6", 2, "10.244.1.5", 1), 0)
    assert decode_entry(raw, 0, 20) is None


def test_a_client_without_permission_turns_itself_off(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ConntrackClient()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(client, "_socket", lambda: None)
    monkeypatch.setattr(client, "get", refuse)
    assert client.original_destination("10.0.0.1", 1, "10.0.0.2", 2) is None
    assert not client.enabled


CHECK = """
import logging, sys
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
from k8spacket.capture.conntrack import ConntrackClient
from k8spacket.agent import build_conntrack
from k8spacket.config import ConfigError, load_settings
c = ConntrackClient()
print("answer", c.original_destination("10.0.0.1", 1, "10.0.0.2", 2), c.enabled)
try:
    build_conntrack(load_settings(sets=["capture.conntrack=true"]))
except ConfigError as e:
    print("error", e)
"""


def test_without_cap_net_admin_one_warning_and_off_or_a_startup_error() -> None:
    """The real kernel refuses NFNETLINK without CAP_NET_ADMIN (dropped with setpriv)."""
    require(os.geteuid() == 0, "needs root to drop a capability")
    setpriv = require_tool("setpriv")
    r = subprocess.run(
        [setpriv, "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable, "-c",
         CHECK],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = r.stdout.splitlines()
    assert sum("need CAP_NET_ADMIN" in line for line in lines) == 1, r.stdout
    assert "answer None False" in lines, r.stdout
    assert any(
        line.startswith("error capture.conntrack: true, but conntrack cannot be read")
        for line in lines
    ), r.stdout

"""``k8spacket run``, plus a dump of what the agent published once it has stopped.

Used by the SIGTERM test: after the signal the agent flushes every open
connection, publishes the records and exits, so its HTTP API is gone by the
time the flush is done. This wrapper runs the same ``Agent`` the CLI runs and,
after :meth:`Agent.run` returns, writes the connection store's records and the
registry's exposition text to ``--dump`` as JSON.

    python tests/agentdump.py --dump OUT.json --config agent.yaml --listen HOST:PORT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

from prometheus_client import generate_latest

from k8spacket.agent import Agent
from k8spacket.config import load_settings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--listen", required=True)
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(load_settings(args.config, os.environ, listen=args.listen))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()
    dump = {"records": agent.store.records(), "metrics": generate_latest(agent.registry).decode()}
    Path(args.dump).write_text(json.dumps(dump))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate the committed captures: ``PYTHONPATH=tests python -m pcapgen``."""

from __future__ import annotations

from pathlib import Path

from pcapgen import captures, demo

DATA = Path(__file__).resolve().parent.parent / "data" / "gen"


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name in captures.CAPTURES:
        print(captures.write(name, DATA))
    for path in demo.write():
        print(path)


if __name__ == "__main__":
    main()

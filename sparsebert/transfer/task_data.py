"""Reading a task's data: local GLUE TSVs / SQuAD v1.1 JSON, or the Hugging Face Hub, as a ``datasets``
``DatasetDict`` keyed by split (:func:`load_task`).

Local layout (``data_dir``): the GLUE download script's ``<root>/<TaskDir>/{train,dev}.tsv`` (MNLI:
``dev_matched.tsv``, ``dev_mismatched.tsv``), where ``data_dir`` may be the GLUE root, its parent (``glue/``
inside it) or the task directory itself; SQuAD: ``train-v1.1.json``/``dev-v1.1.json`` in ``data_dir`` or
``data_dir/squad``. TSVs are split on tab with quoting disabled (sentences hold unbalanced ``"``), BOMs are
stripped, and a row with the wrong number of columns or an unknown label is dropped with a warning that counts it.
The embedded ``polarity`` task is prepared in the cache by :func:`sparsebert.transfer.embedded_polarity.prepare_polarity`.
Task definitions (columns, label order, file names) come from the registry, :mod:`sparsebert.transfer.tasks`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsebert.transfer.embedded_polarity import prepare_polarity
from sparsebert.transfer.glue_tsv import BOM, _check_utf8, _decode, check_glue_tsv, read_glue_tsv, read_glue_tsv_rows  # noqa: F401
from sparsebert.transfer.tasks import TASKS, TaskDataError, TaskDataUnavailableError, TaskSpec, get_task

logger = logging.getLogger(__name__)

__all__ = ["load_task", "read_glue_tsv", "load_squad_json", "check_task_files", "TaskDataError"]


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


def train_file(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local file of a task's training split (``data_dir`` or ``$SPARSEBERT_DATA_DIR``); None when it is not
    local (the Hub, or polarity before it is prepared)."""
    spec = get_task(name)
    d = data_dir or os.environ.get("SPARSEBERT_DATA_DIR")
    if d is None:
        return None
    task_dir = _find_task_dir(spec, Path(d).expanduser())
    f = task_dir / spec.file_for(spec.train_split) if task_dir is not None else None
    return f if f is not None and f.is_file() else None


def _missing(spec: TaskSpec, data_dir: Path, split: str, path: Path | None, hint: bool = True) -> FileNotFoundError:
    expected = f"<data_dir>/{spec.local_dir}/{spec.file_for(split)}"
    where = str(path) if path is not None else f"no {spec.local_dir!r} directory under {data_dir}"
    return FileNotFoundError(
        f"{spec.name}: {split} split not found ({where}); expected the {'GLUE' if spec.tsv else 'SQuAD v1.1'} file "
        f"{expected} (data_dir may be the GLUE root, its parent, or the task directory)."
        + (" Load only the splits you have with splits=(...)." if hint else "")
    )


def check_task_files(name: str, data_dir: str | os.PathLike | None = None,
                     splits: Sequence[str] | str | None = None) -> list[Path]:
    """Before a run: the local files :func:`load_task` would read for these splits (default: all) exist and are
    usable (GLUE: UTF-8, the task's header, at least one usable row; SQuAD: a non-empty UTF-8 file). Raises
    FileNotFoundError or :class:`TaskDataError` naming the file (and the line). Returns the files checked: [] when
    the task's data is not local (no ``data_dir`` and no ``$SPARSEBERT_DATA_DIR``: the Hub; ``polarity`` without a
    complete local copy: prepared in the cache)."""
    spec = get_task(name)
    wanted = _resolve_splits(spec, splits)
    if spec.name == "polarity":
        task_dir = _find_task_dir(spec, Path(data_dir).expanduser()) if data_dir is not None else None
        if task_dir is None or not all((task_dir / spec.file_for(s)).is_file() for s in wanted):
            return []
    else:
        data_dir = data_dir or os.environ.get("SPARSEBERT_DATA_DIR") or None
        if data_dir is None:
            return []
        d = Path(data_dir).expanduser()
        if not d.exists():
            raise FileNotFoundError(f"{spec.name}: data_dir {d} does not exist")
        task_dir = _find_task_dir(spec, d)
        if spec.kind == "span" and task_dir is None and d.is_dir():
            task_dir = d
    out = []
    for split in wanted:
        path = task_dir / spec.file_for(split) if task_dir is not None else None
        if path is None or not path.is_file():
            raise _missing(spec, Path(data_dir), split, path, hint=False)
        if spec.tsv is not None:
            check_glue_tsv(spec, path)
        else:
            _check_utf8(path)
            with open(path, "rb") as fh:
                head = fh.read(4096).removeprefix(BOM)
            if not head.strip():
                raise TaskDataError(f"{path}: empty file (expected SQuAD v1.1 JSON)")
        out.append(path)
    return out


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
    """A SQuAD v1.1 JSON file flattened to columns id/title/context/question/answers{text, answer_start}.
    A file that is not UTF-8 JSON in SQuAD v1.1's shape, or holds no question, raises :class:`TaskDataError`."""
    path = Path(path)
    try:
        raw = json.loads(_decode(path, path.read_bytes()))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    try:
        cols = _flatten_squad(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise TaskDataError(f"{path}: not a SQuAD v1.1 file ({type(e).__name__}: {e}; expected "
                            f"{{'data': [{{'title', 'paragraphs': [{{'context', 'qas': [...]}}]}}]}})") from None
    if not cols["id"]:
        raise TaskDataError(f"{path}: no questions (a SQuAD v1.1 file with an empty 'data' list)")
    return cols


def _flatten_squad(raw: dict) -> dict[str, list]:
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
    out, bad = {}, {}
    for split in splits:
        path = task_dir / spec.file_for(split) if task_dir is not None else None
        if path is None or not path.is_file():
            raise _missing(spec, data_dir, split, path)
        if spec.kind == "span":
            out[split] = datasets.Dataset.from_dict(load_squad_json(path), features=_squad_features())
        else:
            cols, bad[split] = read_glue_tsv_rows(spec, path)
            out[split] = datasets.Dataset.from_dict(cols, features=_glue_features(spec))
    dd = datasets.DatasetDict(out)
    dd.bad_rows = {s: b.count for s, b in bad.items()}  # malformed rows dropped per split (the trial reports them)
    return dd


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

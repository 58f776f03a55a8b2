"""Issue 21 (smaller): GLUE rows with a bad column count or label are named by file and line, counted in the
trial's results, and a file with more than MAX_BAD_FRACTION of them is refused (before a run, and on read). Real
MRPC files from the shared data, damaged on purpose."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import run_search
from search import EXIT_BAD_INPUT
from sparsebert.transfer.glue_tsv import MAX_BAD_FRACTION, read_glue_tsv_rows
from sparsebert.transfer.task_data import check_task_files, load_task
from sparsebert.transfer.tasks import TaskDataError


def _damaged_mrpc(shared_data: Path, root: Path, lines: list[int]) -> Path:
    """A copy of the real MRPC (train, dev) whose train.tsv has ``lines`` (1-based) damaged, alternately a row cut
    to 3 columns and a label no task has."""
    d = root / "MRPC"
    shutil.copytree(shared_data / "glue" / "MRPC", d)
    rows = (d / "train.tsv").read_text(encoding="utf-8-sig").split("\n")
    for i, n in enumerate(lines):
        f = rows[n - 1].split("\t")
        rows[n - 1] = "\t".join(f[:3]) if i % 2 == 0 else "\t".join(["7", *f[1:]])  # label first in MRPC
    (d / "train.tsv").write_text("\n".join(rows))
    return root


def test_bad_rows_are_named_by_file_and_line_and_counted(shared_data, tmp_path):
    root = _damaged_mrpc(shared_data, tmp_path, [5, 40, 1000])
    train = root / "MRPC" / "train.tsv"
    with pytest.warns(UserWarning) as w:
        cols, bad = read_glue_tsv_rows("mrpc", train)
    msg = str(w[0].message)
    assert str(train) in msg and "lines 5, 1000" in msg and "line 40" in msg and "dropped 3 malformed" in msg
    assert bad.count == 3 and bad.bad_width == [5, 1000] and bad.bad_label == [40]
    assert len(cols["label"]) == bad.rows - 3 == 3665
    check_task_files("mrpc", root)  # 3 of 3668: under the limit, accepted before a run
    with pytest.warns(UserWarning):
        dd = load_task("mrpc", root)
    assert dd.bad_rows == {"train": 3, "validation": 0}


def test_a_file_with_too_many_bad_rows_is_refused_before_a_run_and_on_read(shared_data, tmp_path, capsys):
    n = int(3668 * MAX_BAD_FRACTION) + 2
    root = _damaged_mrpc(shared_data, tmp_path / "data", list(range(10, 10 + 3 * n, 3)))
    train = root / "MRPC" / "train.tsv"
    for check in (lambda: check_task_files("mrpc", root), lambda: load_task("mrpc", root)):
        with pytest.raises(TaskDataError) as e:
            check()
        assert str(train) in str(e.value) and f"{n} of 3668 rows" in str(e.value) and "line" in str(e.value)
        assert re.search(r"lines 10, 16, \d+", str(e.value))
    space = yaml.safe_load(Path(run_search.__file__).with_name("search_spaces").joinpath("glue_minilm.yaml")
                           .read_text())
    space["transfer"].update(task="mrpc", data_dir=str(root))
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(space))
    assert run_search.main(["run", str(f), "--storage", str(tmp_path / "s"), "--executor", "local"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(train) in err and "malformed" in err and not (tmp_path / "s").exists()


def test_a_trial_reports_the_rows_it_dropped(shared_data, tmp_path):
    from search_spaces.smoke import smoke_model_dir

    root = _damaged_mrpc(shared_data, tmp_path / "data", [5, 40, 1000])
    space = {"stage": "transfer", "model": str(smoke_model_dir()), "ticket": {"sparsity": 0.0},
             "variants": [{"method": "dense"}],
             "transfer": {"task": "mrpc", "data_dir": str(root), "max_steps": 2, "subset_size": 32,
                          "max_eval_examples": 16, "batch_size": 8, "max_length": 32, "eval_every": 2},
             "eval": {"eval_blocks": 8, "head_steps": 2},
             "tune": {"metric": "score", "mode": "max", "scheduler": "fifo", "searcher": "grid"}}
    f = tmp_path / "counted.yaml"
    f.write_text(yaml.safe_dump(space))
    assert run_search.main(["run", str(f), "--storage", str(tmp_path / "s"), "--executor", "local"]) == 0
    df = pd.read_parquet(tmp_path / "s" / "counted" / "results.parquet")
    assert df["metric/data_bad_rows"].tolist() == [3]

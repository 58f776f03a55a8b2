"""Issue 20, items 1 and 6: every value of a trial's config is a ``config/...`` column of the results in both
executors, the analysis keys rows by the values that differ between trials (report --best-by / --group-by), and
transfer knobs set per task (``{per_task: {TASK: VALUE}, default: VALUE}``) are checked before anything runs and
resolved to the trial's task's value."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import run_search
from conftest import REPO
from search.trial_list import trials
from search_spaces.loader import load_space
from search_spaces.space import SpaceError


def _space(tmp_path: Path, data: Path, **transfer) -> Path:
    """A transfer space on the smoke model: the dense ticket, real GLUE data (a 32-row subset), 4 steps."""
    from search_spaces.smoke import smoke_model_dir

    raw = {
        "stage": "transfer", "model": str(smoke_model_dir()),
        "ticket": {"method": "dense", "sparsity": 0.0, "text": {"source": "embedded", "block_size": 32,
                                                                "max_blocks": 128}},
        "transfer": {"task": "cola", "data_dir": str(data / "glue"), "max_steps": 4, "subset_size": 32,
                     "max_eval_examples": 32, "batch_size": 8, "max_length": 64, "eval_every": 2, **transfer},
        "eval": {"eval_blocks": 8, "head_steps": 2},
    }
    p = tmp_path / "lr_grid.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


# ------------------------------------------------------------------------------------------------ per task


@pytest.mark.parametrize("transfer, key, message", [
    ({"lr": {"per_task": {"colaa": 1e-4}, "default": 2e-4}}, "transfer.lr.per_task.colaa", "unknown task"),
    ({"task": {"grid": ["cola", "rte"]}, "lr": {"per_task": {"cola": 1e-4}}}, "transfer.lr",
     "no value for task rte"),
    ({"lr": {"per_task": {"cola": {"grid": [1e-4, 2e-4]}}, "default": 2e-4}}, "transfer.lr.per_task.cola",
     "plain values"),
    ({"lr": {"per_task": {"cola": 1e-4}, "defualt": 2e-4}}, "transfer.lr.defualt", "unknown key"),
    ({"lr": {"default": 2e-4}}, "transfer.lr", "'default' without 'per_task'"),
    ({"lr": {"per_task": {}, "default": 2e-4}}, "transfer.lr.per_task", "non-empty mapping"),
    ({"lr": {"per_task": {"sst2": 1e-4, "SST-2": 2e-4}, "default": 2e-4}}, "transfer.lr.per_task.SST-2",
     "the same task as sst2"),
])
def test_per_task_values_are_refused_before_anything_is_created(transfer, key, message, shared_data, tmp_path,
                                                                 capsys):
    space = _space(tmp_path, shared_data, **transfer)
    with pytest.raises(SpaceError, match=f"^{space.name}: {key}: .*{message}"):
        load_space(space)
    assert run_search.main(["run", str(space), "--storage", str(tmp_path / "out"), "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{space.name}: {key}:" in err[0] and message in err[0]
    assert not (tmp_path / "out").exists()


def test_each_trial_gets_its_tasks_value_in_both_executors(tmp_path):
    """paper_small.yaml sets the lr per task (cola 1e-4, default 2e-4): the local executor's trials and Tune's
    variants of the same space hold the resolved value, and split_transfer resolves a config left unresolved."""
    from ray.tune.search.variant_generator import generate_variants

    from search.tune_space import param_space
    from sparsebert.transfer.finetune import split_transfer

    space = load_space("paper_small")
    assert space.transfer["lr"] == {"per_task": {"cola": 1e-4, "mrpc": 2e-4}, "default": 2e-4}
    want = {"cola": 1e-4, "sst2": 2e-4, "stsb": 2e-4, "mrpc": 2e-4, "rte": 2e-4, "polarity": 2e-4}
    local = {(t.config["transfer"]["task"], t.config["transfer"]["lr"]) for t in trials(space, tmp_path)}
    assert local == set(want.items())
    tune = {(v["transfer"]["task"], v["transfer"]["lr"]) for _, v in generate_variants(param_space(space, tmp_path))}
    assert tune == set(want.items())
    for task, lr in want.items():
        _, train = split_transfer({"transfer": {**space.transfer, "task": task, "seed": 1}})
        assert train.lr == lr


# ------------------------------------------------------------------------------------------------ results columns


def test_lr_grid_local_executor_columns_summary_and_report(shared_data, tmp_path, capsys):
    """A 2-value lr grid on two tasks (4 dense trials), weight decay set per task: the results hold both lrs and the
    resolved weight decays as config columns; the summary and the report show the lr (each trial its own row);
    the average keeps the lrs apart but averages over the per-task weight decay; --best-by / --group-by."""
    space = _space(tmp_path, shared_data, task={"grid": ["cola", "rte"]}, lr={"grid": [1e-4, 2e-4]},
                   weight_decay={"per_task": {"cola": 0.01}, "default": 0.0})
    assert run_search.main(["run", str(space), "--storage", str(tmp_path), "--executor", "local",
                            "--workers", "2"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / space.stem
    for df in (pd.read_parquet(exp / "results.parquet"), pd.read_csv(exp / "results.csv")):
        assert len(df) == 4 and (df["status"] == "TERMINATED").all()
        assert sorted(df["config/transfer.lr"]) == [1e-4, 1e-4, 2e-4, 2e-4]
        assert dict(zip(df["task"], df["config/transfer.weight_decay"])) == {"cola": 0.01, "rte": 0.0}
        assert {"config/ticket.method", "config/transfer.max_steps", "config/eval.eval_blocks",
                "config/stage"} <= set(df.columns)
    for t in df["trial_id"]:  # the trial ran with what its row says
        cfg = json.loads((exp / t / "config.json").read_text())["transfer"]
        row = df[df["trial_id"] == t].iloc[0]
        assert (cfg["lr"], cfg["weight_decay"]) == (row["config/transfer.lr"], row["config/transfer.weight_decay"])
    # the end-of-run summary: a transfer.lr column (the varying keys only), one line per trial
    summary = out[out.index("== results:"):].splitlines()
    head = summary[1].split()
    assert "transfer.lr" in head and "transfer.weight_decay" in head and "transfer.max_steps" not in head
    assert sum(("0.0001" in l or "1e-04" in l) for l in summary[2:6]) == 2

    assert run_search.main(["report", str(exp)]) == 0
    td = pd.read_csv(exp / "analysis" / "tidy.csv")
    assert len(td) == 4 and sorted(td["config/transfer.lr"]) == [1e-4, 1e-4, 2e-4, 2e-4]
    avg = pd.read_csv(exp / "analysis" / "average.csv")
    assert sorted(avg["config/transfer.lr"]) == [1e-4, 2e-4] and (avg["n_tasks"] == 2).all()
    assert "config/transfer.weight_decay" not in avg.columns
    report = (exp / "analysis" / "report.md").read_text()
    assert "| transfer.lr |" in report.replace("| seed | transfer.lr", "| transfer.lr")

    assert run_search.main(["report", str(exp), "--best-by", "transfer.lr", "--group-by",
                            "config/transfer.lr"]) == 0
    best = pd.read_csv(exp / "analysis" / "tidy.csv")
    assert len(best) == 2 and set(best["task"]) == {"cola", "rte"}
    for _, r in best.iterrows():  # the kept lr is the one with the better score on that task
        assert r["best_score"] == td[td["task"] == r["task"]]["best_score"].max()
    report = (exp / "analysis" / "report.md").read_text()
    assert "## Scores by transfer.lr" in report and "**best**" in report and "Best value picked" in report

    # the lr sweep's table per task (benchmarks/paper_small_readme.py): the rule picks a best-scoring lr per task
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_small_readme

    chosen = paper_small_readme.chosen_lrs(exp)
    assert set(chosen) == {"cola", "rte"}
    for task, lr in chosen.items():
        means = td[td["task"] == task].groupby("config/transfer.lr")["best_score"].mean()
        assert means[lr] == means.max()
    table = paper_small_readme.lr_table(exp)
    assert all(f"| {t} | {lr:g} |" in table for t in ("cola", "rte") for lr in (1e-4, 2e-4))

    capsys.readouterr()
    assert run_search.main(["report", str(exp), "--best-by", "transfer.lrr"]) == 2
    err = capsys.readouterr().err
    assert "transfer.lrr: not a config key" in err and "transfer.lr" in err


def test_lr_grid_ray_tune_columns_and_per_task_value(ray_local, shared_data, tmp_path, capsys):
    """The same under Ray Tune: the lr column with both values, the per-task weight decay resolved in the trial's
    own params.json and in the results, under the local executor's column names."""
    space = _space(tmp_path, shared_data, lr={"grid": [1e-4, 2e-4]},
                   weight_decay={"per_task": {"cola": 0.01, "rte": 0.0}})
    assert run_search.main(["run", str(space), "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / space.stem
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 2 and (df["status"] == "TERMINATED").all()
    assert sorted(df["config/transfer.lr"]) == [1e-4, 2e-4]
    assert (df["config/transfer.weight_decay"] == 0.01).all()
    assert {"config/ticket.method", "config/transfer.max_steps", "config/eval.eval_blocks"} <= set(df.columns)
    for d in df["trial_dir"]:
        assert json.loads((Path(d) / "params.json").read_text())["transfer"]["weight_decay"] == 0.01
    assert "transfer.lr" in out[out.index("== results:"):].splitlines()[1].split()
    assert run_search.main(["report", str(exp)]) == 0
    assert len(pd.read_csv(exp / "analysis" / "tidy.csv")) == 2


def test_config_columns_flatten_every_value_and_keep_one_type_per_column(tmp_path):
    """The ticket as the variant overlays it, nested sections dotted, lists as JSON text, a value set per task
    resolved, and a column mixing text and numbers (eval_every auto vs 50) written as text (parquet needs one
    type per column)."""
    from search.local import LocalResult
    from search.results import config_columns, results_frame

    base = {"stage": "transfer", "ticket": {"sparsity": 0.5, "text": {"source": "embedded"}, "save_at": [2, 4]},
            "transfer": {"task": "cola", "lr": {"per_task": {"cola": 1e-4}, "default": 2e-4}, "eval_every": "auto"}}
    cols = config_columns({**base, "variant": {"method": "omp", "sparsity": 0.7}})
    assert cols["config/ticket.method"] == "omp" and cols["config/ticket.sparsity"] == 0.7
    assert cols["config/ticket.text.source"] == "embedded" and cols["config/ticket.save_at"] == "[2, 4]"
    assert cols["config/transfer.lr"] == 1e-4 and cols["config/stage"] == "transfer"
    other = {**base, "transfer": {**base["transfer"], "task": "rte", "eval_every": 50}}
    rs = [LocalResult({"trial_id": str(i), "training_iteration": 1, "stage": "transfer"}, c, None, str(tmp_path), None)
          for i, c in enumerate((base, other))]
    df = results_frame(rs, "x")
    assert list(df["config/transfer.lr"]) == [1e-4, 2e-4]
    assert list(df["config/transfer.eval_every"]) == ["auto", "50"]
    df.to_parquet(tmp_path / "r.parquet")
    assert list(pd.read_parquet(tmp_path / "r.parquet")["config/transfer.lr"]) == [1e-4, 2e-4]

"""Downstream transfer on all nine tasks (tiny model, real files where we have them), fixed masks, exact resume."""

from __future__ import annotations


import datasets
import pytest
import torch
from transformers import AutoModel

from helpers import read_pairs, write_mnli, write_qqp
from search_spaces.presets import apply_preset
from sparsebert.text.batching import epoch_permutation
from sparsebert.transfer.finetune import FineTune, FinetuneConfig, auto_eval_every, selection_score, split_transfer
from sparsebert.tickets.pruning import omp_ticket
from sparsebert.models.registry import prunable_weights
from sparsebert.transfer.task_tensors import TaskTensors, epoch_batches, train_batches
from sparsebert.transfer.task_data import load_task
from sparsebert.engine.training import TrainConfig, train


@pytest.fixture(scope="module")
def glue_dirs(shared_data, tmp_path_factory):
    """Real GLUE dirs for 5 tasks; MNLI/QQP written by the test in the GLUE layout from real RTE/MRPC sentences;
    QNLI train taken from the real dev file (we only have QNLI dev)."""
    root = tmp_path_factory.mktemp("glue")
    write_mnli(root, read_pairs(shared_data / "glue/RTE/train.tsv", 1, 2, 150))
    write_qqp(root, read_pairs(shared_data / "glue/MRPC/train.tsv", 3, 4, 120))
    q = root / "QNLI"
    q.mkdir()
    lines = (shared_data / "glue/QNLI/dev.tsv").read_text().split("\n")
    (q / "train.tsv").write_text("\n".join(lines[:1] + lines[1:201]) + "\n")
    (q / "dev.tsv").write_text("\n".join(lines[:1] + lines[201:301]) + "\n")
    return {"local": root, "shared": shared_data / "glue"}


def _squad_dd(shared_data):
    dev = load_task("squad", shared_data / "squad", splits=("validation",))["validation"]
    return datasets.DatasetDict({"train": dev.select(range(48)), "validation": dev.select(range(48, 64))})


@pytest.mark.parametrize("task", ["mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "squad"])
def test_each_task_runs_end_to_end_with_a_ticket(task, tiny, tok, glue_dirs, shared_data):
    local = task in ("mnli", "qqp", "qnli")
    cfg = FinetuneConfig(task=task, data_dir=str(glue_dirs["local" if local else "shared"]), subset_size=48,
                         max_eval_examples=32, batch_size=8, eval_batch_size=32,
                         max_length=128 if task == "squad" else 64, stride=48, max_steps=4)
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    ft = FineTune(tiny, cfg, tok, ticket=ticket, datasets=_squad_dd(shared_data) if task == "squad" else None)
    reports = []
    out = train(ft, TrainConfig(steps=4, lr=1e-3, eval_every=2, log_every=0), report=lambda m, ck: reports.append(m))
    assert len(reports) == 2 and all(r["score"] == r["score"] for r in reports)  # not NaN
    expected = {"mnli": ["validation_matched/accuracy", "validation_mismatched/accuracy"], "qqp": ["accuracy", "f1"],
                "cola": ["matthews_correlation"], "stsb": ["pearson", "spearmanr"], "mrpc": ["accuracy", "f1"],
                "squad": ["exact_match", "f1"]}.get(task, ["accuracy"])
    for key in expected:
        assert key in out, (task, sorted(out))
    assert out["best_score"] == max(r["score"] for r in reports)
    if task == "mnli":  # matched and mismatched are separate numbers from separate files
        assert len(ft.eval_ds["validation_matched"]) == 32 and len(ft.eval_ds["validation_mismatched"]) == 32


def test_pruned_weights_stay_exactly_zero_and_kept_ones_train(tiny, tok, shared_data):
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.6)
    cfg = FinetuneConfig(task="rte", data_dir=str(shared_data / "glue"), subset_size=64, max_eval_examples=16,
                         batch_size=8, max_length=64)
    ft = FineTune(tiny, cfg, tok, ticket=ticket)
    start = {n: w.detach().clone() for n, w in prunable_weights(ft.model).items()}
    for name, w in start.items():  # surviving weights start from pre-trained values, pruned are zero in storage
        assert torch.all(w[~ticket.masks[name]] == 0)

    def check(metrics, _):
        for name, w in prunable_weights(ft.model).items():
            assert torch.all(w[~ticket.masks[name]] == 0), (metrics["step"], name)

    train(ft, TrainConfig(steps=6, lr=1e-3, weight_decay=0.01, eval_every=1, log_every=0), report=check)
    moved = sum(int((w != start[n]).sum()) for n, w in prunable_weights(ft.model).items())
    assert moved > 0.5 * ticket.kept()


def test_resumed_finetuning_matches_uninterrupted(tiny, tok, shared_data, tmp_path):
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    cfg = FinetuneConfig(task="mrpc", data_dir=str(shared_data / "glue"), subset_size=40, max_eval_examples=16,
                         batch_size=8, max_length=64)
    tc = TrainConfig(steps=8, lr=5e-4, eval_every=4, log_every=0, seed=3)

    full = FineTune(tiny, cfg, tok, ticket=ticket, seed=3)
    train(full, tc)

    def stop_at_4(metrics, write):
        if metrics["step"] == 4:
            write(tmp_path / "ck")
            raise KeyboardInterrupt  # the "crash"

    first = FineTune(tiny, cfg, tok, ticket=ticket, seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(first, tc, report=stop_at_4)
    resumed = FineTune(tiny, cfg, tok, ticket=ticket, seed=3)
    out = train(resumed, tc, resume_from=tmp_path / "ck")
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert out["step"] == 8


@pytest.mark.parametrize("buckets", [1, 2, 50])
def test_batches_resume_exactly_and_cover_every_row_once_per_epoch(buckets):
    lengths = torch.randint(3, 40, (23,), generator=torch.Generator().manual_seed(0))
    per_epoch = [epoch_batches(lengths, 4, seed=1, epoch=e, buckets=buckets) for e in range(3)]
    for batches in per_epoch:
        assert len(batches) == 6 and sorted(torch.cat(batches).tolist()) == list(range(23))
        assert sorted(len(b) for b in batches)[1:] == [4] * 5  # only one partial batch
    assert not all(torch.equal(a, b) for a, b in zip(per_epoch[0], per_epoch[1]))  # epochs differ
    data = TaskTensors({"input_ids": torch.arange(23 * 40).view(23, 40)}, lengths, {"labels": torch.arange(23)})
    a = [b["labels"].tolist() for b, _ in zip(train_batches(data, 4, 1, 0, buckets), range(14))]
    b = [b["labels"].tolist() for b, _ in zip(train_batches(data, 4, 1, 5, buckets), range(9))]
    assert a[5:] == b
    if buckets == 1:  # plain batches are the seeded permutation cut in order
        assert torch.cat(per_epoch[0]).tolist() == epoch_permutation(23, seed=1, epoch=0).tolist()


def reference_transfer(task: str):
    """The transfer configs of ``preset: reference`` (the one definition of the reference; paper_finetune is gone)."""
    return split_transfer(apply_preset({"preset": "reference", "stage": "transfer", "transfer": {"task": task}}))


def test_paper_preset_and_bad_task():
    cfg, tc = reference_transfer("mnli")
    assert (cfg.batch_size, cfg.max_length, cfg.epochs, tc.lr, tc.eval_every) == (32, 128, 3.0, 2e-5, 500)
    cfg, tc = reference_transfer("squad")
    assert (cfg.stride, tc.eval_every) == (128, 1000)
    with pytest.raises(ValueError, match="mnli"):
        FinetuneConfig(task="nosuchtask")


# ---- reference knobs: MNLI selection split, eval_every auto, eval_at_end, SQuAD stride_mode ---------------------


def _mnli_evals():
    """Three evaluations where matched and mismatched peak at different steps."""
    return {50: {"validation_matched": {"accuracy": 0.70}, "validation_mismatched": {"accuracy": 0.60}},
            100: {"validation_matched": {"accuracy": 0.80}, "validation_mismatched": {"accuracy": 0.65}},
            150: {"validation_matched": {"accuracy": 0.75}, "validation_mismatched": {"accuracy": 0.72}}}


@pytest.mark.parametrize("select_split, best_step, best_score", [("matched", 100, 0.80), ("mismatched", 150, 0.72)])
def test_mnli_select_split_picks_the_best_step(select_split, best_step, best_score):
    from types import SimpleNamespace

    from sparsebert.transfer.tasks import get_task

    ft = SimpleNamespace(spec=get_task("mnli"), cfg=FinetuneConfig(task="mnli", select_split=select_split),
                         best={"best_score": float("-inf"), "best_step": 0})
    for step, per_split in _mnli_evals().items():
        out = FineTune.record(ft, step, per_split)
        assert out["score"] == per_split[f"validation_{select_split}"]["accuracy"]
        # both splits stay reported
        assert {"validation_matched/accuracy", "validation_mismatched/accuracy"} <= set(out)
    assert (ft.best["best_step"], ft.best["best_score"]) == (best_step, best_score)
    assert ft.best["best/validation_matched/accuracy"] == _mnli_evals()[best_step]["validation_matched"]["accuracy"]
    assert selection_score("mnli", _mnli_evals()[best_step], select_split) == best_score


def test_select_split_only_changes_mnli_and_is_validated():
    per_split = {"validation": {"accuracy": 0.5, "f1": 0.7}}
    assert selection_score("mrpc", per_split, "mismatched") == selection_score("mrpc", per_split, "matched") == 0.6
    with pytest.raises(ValueError, match="select_split"):
        FinetuneConfig(task="mnli", select_split="both")
    with pytest.raises(ValueError, match="stride_mode"):
        FinetuneConfig(task="squad", stride_mode="gap")


def test_eval_every_auto_in_the_transfer_section():
    def every(task, value):
        return split_transfer({"transfer": {"task": task, "eval_every": value}})[1].eval_every

    assert [every(t, "auto") for t in ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "squad")] == \
        [500, 500, 500, 50, 50, 50, 50, 50, 1000]
    assert every("mnli", 20) == 20 and every("rte", 0) == 0  # integers still work
    assert split_transfer({"transfer": {"task": "rte"}})[1].eval_every == 50  # absent: TrainConfig's default
    for bad in ("often", -5, 2.5, True):
        with pytest.raises(ValueError, match="eval_every"):
            every("rte", bad)
    assert auto_eval_every("sst-2") == 50
    ft, tc = split_transfer({"transfer": {"task": "rte", "eval_at_end": False, "stride_mode": "step",
                                          "select_split": "mismatched"}})
    assert (tc.eval_at_end, ft.stride_mode, ft.select_split) == (False, "step", "mismatched")


@pytest.mark.parametrize("eval_at_end, best_step, best_score", [(True, 5, 0.9), (False, 4, 0.6)])
def test_eval_at_end_keeps_an_off_cadence_last_step_out_of_best(eval_at_end, best_step, best_score, tiny, tok,
                                                                  shared_data):
    cfg = FinetuneConfig(task="rte", data_dir=str(shared_data / "glue"), subset_size=16, max_eval_examples=8,
                         batch_size=8, max_length=32)
    ft = FineTune(tiny, cfg, tok)
    scores = {2: 0.5, 4: 0.6, 5: 0.9}  # the last step (5) is off the every-2 cadence and scores best
    evaluated = []

    def evaluate(step, track_best=True):
        evaluated.append((step, track_best))
        return FineTune.record(ft, step, {"validation": {"accuracy": scores[step]}}, track_best)

    ft.evaluate = evaluate
    reports = []
    out = train(ft, TrainConfig(steps=5, lr=1e-3, eval_every=2, eval_at_end=eval_at_end, log_every=0),
                report=lambda m, ck: reports.append(m))
    assert [r["step"] for r in reports] == [2, 4, 5]  # the last step is still evaluated and reported
    assert evaluated == [(2, True), (4, True), (5, eval_at_end)]
    assert out["score"] == 0.9 and (out["best_step"], out["best_score"]) == (best_step, best_score)
    # on the cadence the last step counts either way
    ft.best = {"best_score": float("-inf"), "best_step": 0}
    scores = {2: 0.5, 4: 0.9}
    out = train(ft, TrainConfig(steps=4, lr=1e-3, eval_every=2, eval_at_end=eval_at_end, log_every=0))
    assert (out["best_step"], out["best_score"]) == (4, 0.9)


def test_eval_at_end_false_needs_a_recipe_that_can_skip_best():
    class NoTrackBest:
        def evaluate(self, step):
            return {}

    with pytest.raises(ValueError, match="track_best"):
        train(NoTrackBest(), TrainConfig(steps=1, eval_at_end=False))


def test_paper_preset_carries_the_reference_knobs():
    for task, every in (("mnli", 500), ("qqp", 500), ("qnli", 500), ("rte", 50), ("squad", 1000)):
        cfg, tc = reference_transfer(task)
        assert tc.eval_every == every and tc.eval_at_end is False
        assert cfg.select_split == "mismatched" and cfg.stride_mode == "step"  # each read by its own task only
    # our defaults are unchanged
    assert (FinetuneConfig().select_split, FinetuneConfig().stride_mode, TrainConfig().eval_at_end) == \
        ("matched", "overlap", True)

"""PBT that really perturbs: a resumed run applies its own hyperparameters over the checkpoint's (weights, moments,
step and schedule position come from the checkpoint), reports its lr, and a real Ray Tune PBT run on the smoke model
clones the donor's weights and then trains at the clone's own lr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import run_search
from search_spaces.loader import load_space
from sparsebert.engine.training import (RecipeDefaults, TrainConfig, _build_optim, _schedule, apply_hyperparameters,
                                        read_checkpoint, state_sha256)


class _Linear(RecipeDefaults):
    """The smallest Recipe: one linear layer on fixed random data."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 2)
        self.x, self.y = torch.randn(8, 4), torch.randn(8, 2)

    def parameters(self):
        return list(self.model.parameters())

    def models(self):
        return [self.model]


    def batches(self, start):
        while True:
            yield (self.x, self.y)

    def loss(self, batch, step):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean(), {}



    def state_dict(self):
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])


def test_restore_keeps_moments_and_position_but_applies_the_runs_own_hyperparameters():
    donor_cfg = TrainConfig(steps=10, lr=1e-3, weight_decay=0.0, warmup_steps=2)
    m = _Linear()
    _, opt, sched = _build_optim(m, donor_cfg, 10)
    for _ in range(3):
        opt.zero_grad()
        m.loss((m.x, m.y), 0)[0].backward()
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    mine = TrainConfig(steps=10, lr=3e-4, weight_decay=0.1, warmup_steps=2)  # a perturbed config
    _, opt2, sched2 = _build_optim(m, mine, 10)
    own = [{k: v for k, v in g.items() if k != "params"} for g in opt2.param_groups]
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    apply_hyperparameters(opt2, sched2, own)
    g = opt2.param_groups[0]
    assert sched2.last_epoch == 3  # the schedule position is the checkpoint's
    assert g["initial_lr"] == 3e-4 and sched2.base_lrs == [3e-4] and g["weight_decay"] == 0.1
    assert g["lr"] == pytest.approx(3e-4 * _schedule(mine, 10)(3)) and sched2.get_last_lr() == [g["lr"]]
    p = m.parameters()[0]
    assert torch.equal(opt2.state[p]["exp_avg"], opt.state[p]["exp_avg"])  # moments are the checkpoint's
    sched2.step()  # and the schedule goes on from there at the new peak
    assert g["lr"] == pytest.approx(3e-4 * _schedule(mine, 10)(4))


def test_a_resumed_run_reports_the_lr_of_its_own_config(tmp_path):
    from sparsebert.engine.training import train

    def stop_at_4(metrics, write):
        if metrics["step"] == 4:
            write(tmp_path / "ck")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_Linear(), TrainConfig(steps=8, lr=1e-2, eval_every=2, log_every=0), report=stop_at_4)
    donor = read_checkpoint(tmp_path / "ck" / "trainer.pt")
    rows, logs = [], []
    clone = _Linear()
    cfg = TrainConfig(steps=8, lr=2e-3, eval_every=2, log_every=0)
    train(clone, cfg, report=lambda m, w: rows.append(m), resume_from=tmp_path / "ck", log=logs.append)
    assert [r["step"] for r in rows] == [6, 8] and all(r["resumed_at"] == 4 for r in rows)
    assert [r["lr"] for r in rows] == pytest.approx([2e-3 * 2 / 8, 0.0])
    assert f"state sha256 {state_sha256(donor['method'])[:16]}" in logs[0]  # the weights it resumed from


def _trial_dirs(exp):
    return {d.name.rsplit("_", 1)[-1]: d for d in exp.iterdir() if d.is_dir() and (d / "progress.csv").is_file()}


RESUMED = re.compile(r"resumed at step (\d+)/\d+ from (\S+) \(state sha256 ([0-9a-f]{16})")


@pytest.mark.slow
def test_pbt_smoke_perturbs_and_a_clone_trains_from_the_donors_weights_at_its_own_lr(ray_local, tmp_path):
    space = load_space("finetune_pbt", smoke=True)
    sched = space.tune["scheduler"]
    assert space.tune["num_samples"] >= 2 and sched["perturbation_interval"] < space.transfer["max_steps"] // \
        space.transfer["eval_every"]  # enough reports to perturb
    assert run_search.main(["run", "finetune_pbt", "--smoke", "--storage", str(tmp_path)]) == 0
    exp = tmp_path / "finetune_pbt-smoke"
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == space.tune["num_samples"] and (df["status"] == "TERMINATED").all()  # no trial errors
    assert df["error"].isna().all()
    for _, row in df.iterrows():  # every row names the MLM head its ticket's mlm_loss was measured with
        meta = json.loads((Path(row.ticket_path) / "ticket.json").read_text())
        assert len(row.mlm_head_sha256) == 64 and row.mlm_head_sha256 == meta["metrics"]["mlm_head_sha256"]

    # pbt_global.txt: [trial tag, donor tag, trial iteration, donor iteration, donor config, new config] per exploit
    exploits = [json.loads(line) for line in (exp / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "PBT never perturbed"
    dirs = _trial_dirs(exp)
    index = lambda tag: f"{int(tag.split('_', 1)[0]):05d}"  # noqa: E731 -- the tag starts with the trial's index
    checked_lr = checked_weights = 0
    for tid, d in dirs.items():
        mine = [e for e in exploits if index(e[0]) == tid]
        clones = []  # (step, donor dir) of each restore from another trial's checkpoint, in order
        for step, path, sha in RESUMED.findall((d / "log.txt").read_text()):
            # the weights: the restored state is that very checkpoint (its step, its state's sha256) ...
            ck = read_checkpoint(path)
            assert int(ck["step"]) == int(step) and state_sha256(ck["method"])[:16] == sha
            if d.name not in path:  # ... and a clone's restore reads the donor's checkpoint, in its directory
                donor = [o for o in dirs.values() if o != d and o.name in path]
                assert len(donor) == 1
                clones.append((int(step), donor[0]))
                checked_weights += 1
        assert len(clones) == len(mine), (d.name, clones, [e[:4] for e in mine])
        rows = pd.read_csv(d / "progress.csv")
        bounds = [s for s, _ in clones[1:]] + [10**9]
        for (at, donor), upto, (_, donor_tag, _, _, donor_cfg, new_cfg) in zip(clones, bounds, mine):
            assert donor == dirs[index(donor_tag)]
            new_lr, donor_lr = new_cfg["transfer"]["lr"], donor_cfg["transfer"]["lr"]
            # from the next step on (until this trial's next exploit), the lr is the new config's, on its schedule
            after = rows[(rows.step > at) & (rows.step <= upto)]
            assert len(after) or at == rows.total_steps.max(), f"no report of {d.name} after its restore at step {at}"
            for _, r in after.iterrows():
                factor = _schedule(TrainConfig(lr=new_lr), int(r.total_steps))(int(r.step))
                assert r.lr == pytest.approx(new_lr * factor, rel=1e-6, abs=1e-12), (d.name, int(r.step))
                if factor > 0 and abs(new_lr / donor_lr - 1) > 1e-3:  # and not the donor's
                    assert r.lr != pytest.approx(donor_lr * factor, rel=1e-6)
                    checked_lr += 1
    assert checked_weights >= 1 and checked_lr >= 1, (checked_weights, checked_lr)

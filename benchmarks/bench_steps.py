"""Step-time benchmark (issue 3): masked (TAMT) train steps vs the dense MLM train step, same model, batch, machine.

Prints, from one run, side by side: dense MLM step, TAMT-MLM (threshold and top-k binarizers), TAMT-KD (incl. the
teacher's forward) and their ratios to the dense step, plus steps/s. One torch thread (as in a Ray trial).

    python benchmarks/bench_steps.py [--model embedded-minilm] [--batch 16] [--seq 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.nn.utils import parametrize

from sparsebert.masking import apply_score_masks
from sparsebert.models import load_pretraining_model, load_tokenizer
from sparsebert.objectives import kd_loss, mlm_loss_from_hidden
from sparsebert.pruning import magnitude_masks
from sparsebert.registry import prunable_weights


def mlm_batch(tok, batch, seq, g):
    ids = torch.randint(1000, tok.vocab_size, (batch, seq), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    labels = torch.full_like(ids, -100)
    sel = torch.rand(ids.shape, generator=g) < 0.15
    sel[:, 0] = sel[:, -1] = False
    labels[sel] = ids[sel]
    inp = ids.clone()
    inp[sel] = tok.mask_token_id
    return inp, labels


def time_steps(step_fn, n, warmup=2):
    for _ in range(warmup):
        step_fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded-minilm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (median reported)")
    ap.add_argument("--sparsity", type=float, default=0.7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer(args.model)
    g = torch.Generator().manual_seed(0)
    inp, labels = mlm_batch(tok, args.batch, args.seq, g)

    def make(kind):
        m = load_pretraining_model(args.model)
        m.head_pretrained = True  # timing only: the head's values do not matter
        m.train()
        for p in m.parameters():
            p.requires_grad_(kind == "dense")
        params = [p for p in m.parameters() if p.requires_grad]
        teacher = None
        if kind != "dense":
            teacher = copy.deepcopy(m.base).eval() if kind == "kd" else None
            binarizer = "topk" if kind == "mlm-topk" else "threshold"
            init = magnitude_masks(prunable_weights(m.base), args.sparsity)
            sm = apply_score_masks(m.base, init, args.sparsity, binarizer)
            params = [s.scores for s in sm.values()]
            if kind != "kd":
                hp = m.head_params()
                for p in hp:
                    p.requires_grad_(True)
                params += hp
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step():
            with parametrize.cached():
                out = m(inp if kind != "kd" else inp, output_hidden_states=kind == "kd")
                if kind == "kd":
                    with torch.no_grad():
                        th = teacher(inp, output_hidden_states=True).hidden_states
                    loss = kd_loss(out.hidden_states, th)
                else:
                    loss = mlm_loss_from_hidden(m, out.last_hidden_state, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return step

    results = {}
    for kind in ["dense", "mlm-threshold", "mlm-topk", "kd"]:
        results[kind] = time_steps(make(kind), args.steps)
    dense = results["dense"]
    print(f"\nmodel {args.model}  batch {args.batch} x seq {args.seq}  sparsity {args.sparsity}  1 thread")
    print(f"{'variant':<26}{'s/step':>10}{'steps/s':>10}{'vs dense':>10}")
    names = {"dense": "dense MLM (all weights)", "mlm-threshold": "TAMT-MLM (threshold)",
             "mlm-topk": "TAMT-MLM (exact top-k)", "kd": "TAMT-KD (+teacher fwd)"}
    for k, t in results.items():
        print(f"{names[k]:<26}{t:>10.3f}{1 / t:>10.2f}{t / dense:>9.2f}x")


if __name__ == "__main__":
    main()

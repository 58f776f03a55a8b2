"""Name -> description of every column of the tidy and average tables (the report's "Columns" section)."""

from __future__ import annotations

from sparsebert.tickets.finders import label_order
from sparsebert.tickets.ticket import Method

#: name -> description of every column of the tidy and average tables (``metric/<name>``: one per metric).
COLUMNS: dict[str, str] = {
    # identity of the ticket
    "ticket_id": "ticket identifier (results' ticket_id; 'dense:<model>' for the unpruned model, "
                 "or a synthesized '<method>-<init>-<objective>-s<sparsity>-<steps>' key when missing)",
    "label": f"display name of the finding method: {', '.join(label_order())} "
             "(' (random init)' appended for TAMT from a random mask)",
    "model": "source pre-trained model",
    "method": " | ".join(m.value for m in Method),
    "init": "TAMT mask initialisation: omp | random (empty for other methods)",
    "objective": "TAMT/IMP training objective: mlm | kd | mlm_kd (empty for other methods)",
    "sparsity": "fraction of prunable weights removed (0.0 for the dense model)",
    "steps": "training steps spent finding the ticket (0 for OMP/random/dense)",
    "ticket_seed": "seed of the find trial / ticket.json that produced the ticket",
    "ticket_path": "resolved ticket directory (empty when not found on disk)",
    # pre-training quality
    "mlm_loss": "MLM loss of the ticket on held-out WikiText (lower is better)",
    "kd_loss": "KD loss (mean 1 - cos of layer outputs vs the dense teacher) on held-out data",
    "kd_loss_mse": "the reference's KD loss (full_mse): MSE of the layer outputs vs the dense teacher, mean over "
                   "layers (empty for tickets evaluated before it was measured)",
    "loss_source": "where the losses came from: evaluate (an 'evaluate' trial), transfer (the transfer row "
                   "itself), find (the 'find' trial), ticket.json (the ticket's metadata), or none",
    "omp_similarity": "mean over matrices of the Jaccard similarity of the ticket's mask to the OMP mask of the "
                      "same model and sparsity found in this experiment (1 − distance from OMP); NaN if that "
                      "OMP ticket or either mask file is absent",
    "omp_hamming": "normalized Hamming distance (differing entries / all entries) to that OMP mask",
    # downstream
    "task": "downstream task (GLUE task name or squad)",
    "seed": "fine-tuning seed of the transfer trial",
    "best_score": "the task's main dev score at the best evaluation (as reported by the trial; percent or "
                  "fraction as given)",
    "stopped_early": "True when the kept transfer trial was stopped by the scheduler (ASHA) before its last step: "
                     "its best_score is a lower bound (always False with --exclude-stopped, which leaves them out)",
    "metric/<name>": "every metric the transfer trial reported at its best evaluation, e.g. metric/accuracy, "
                     "metric/f1, metric/validation_matched/accuracy",
    "config/<section>.<key>": "a searched value: a config value that differs between the experiment's transfer "
                              "trials (e.g. config/transfer.lr of an lr grid; shown as transfer.lr); rows are kept "
                              "apart by it (the average only by those that vary for one ticket on one task), "
                              "`report --best-by KEY` keeps the best value per ticket and task instead",
    "n_trials": "number of finished transfer trials merged into the row (trials of one (ticket, task, seed) and "
                "identical searched values, e.g. num_samples > 1: the row keeps the highest best_score)",
    "trial_id": "trial id of the kept transfer trial",
    "time_total_s": "wall time of the kept transfer trial (s)",
    # average table
    "avg_score": "mean over tasks of the ticket's best_score (each task first averaged over fine-tuning seeds)",
    "score_std_seeds": "mean over tasks of the std of best_score over fine-tuning seeds (NaN with one seed)",
    "n_tasks": "number of tasks that went into avg_score (= every task with a finished score in the experiment)",
    "tasks": "comma-separated tasks averaged",
    "n_seeds": "smallest number of fine-tuning seeds of any task of the ticket",
    "n_stopped": "how many of the (task, seed) scores averaged into avg_score are of trials stopped early by the "
                 "scheduler (lower bounds); 0 when none",
}  # fmt: skip

"""What ``resume`` checks before it continues an experiment directory (no Ray imported here).

* :func:`untrusted`: Tune's restore unpickles ``tuner.pkl`` (and cloudpickle payloads in ``experiment_state-*.json``)
  from the experiment directory, i.e. runs code from it. The directory and every file directly in it must be
  owned by the current user and writable by nobody else, or resume refuses (exit 2).
* :func:`tune_state_damage`: a Tune state cut short (a full disk, a crash mid-write) is named before Ray starts;
  the files are parsed without unpickling anything (``pickletools`` walks the opcodes, ``json`` the state list).
* :func:`location`: a local experiment resumes where it is now (storage = its parent, name = its basename), not at
  the path recorded in ``space.json`` when it was created.
* :func:`kept_note`: what finished and is kept, for the messages of a resume that stops.
"""

from __future__ import annotations

import json
import os
import pickletools
import stat
from pathlib import Path

TUNER_PKL = "tuner.pkl"
STATE_GLOB = "experiment_state-*.json"


def untrusted(exp_dir: Path) -> list[str]:
    """Why ``exp_dir`` must not be restored from: the directory, or a file directly in it (``tuner.pkl``,
    ``space.json``, ``experiment_state-*.json``, searcher state, ...), owned by another user or writable by group
    or others (anyone who can write there can make the restore run their code). Empty: fine."""
    uid = os.getuid()
    out = []
    try:
        entries = sorted(p for p in exp_dir.iterdir() if p.is_file())
    except OSError as e:
        return [f"{exp_dir} cannot be listed ({e.strerror or e})"]
    for p in [exp_dir, *entries]:
        try:
            st = p.stat()
        except OSError as e:
            out.append(f"{p} cannot be read ({e.strerror or e})")
            continue
        if st.st_uid != uid:
            out.append(f"{p} is owned by uid {st.st_uid}, not by you (uid {uid})")
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if st.st_mode & bit)
            out.append(f"{p} is writable by {who} (mode {stat.filemode(st.st_mode)})")
    return out


def _pickle_complete(data: bytes) -> str | None:
    """None when ``data`` is one whole pickle (walked opcode by opcode, nothing is executed), else what is wrong."""
    if not data:
        return "is empty (0 bytes)"
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # noqa: BLE001 -- ValueError ("pickle exhausted before seeing STOP"), bad opcodes, ...
        return f"is cut short or corrupt ({len(data)} bytes: {e})"
    return None


def tune_state_damage(exp_dir: Path) -> str | None:
    """What is damaged in the Tune state of ``exp_dir`` (``tuner.pkl``, the newest ``experiment_state-*.json``, the
    one Tune resumes from), or None when both are whole."""
    return tuner_pkl_damage(exp_dir) or experiment_state_damage(exp_dir)


def tuner_pkl_damage(exp_dir: Path) -> str | None:
    """What is wrong with ``tuner.pkl`` (missing, empty, cut short), or None."""
    pkl = exp_dir / TUNER_PKL
    if not pkl.is_file():
        return f"{pkl} is missing (this is not a Ray Tune experiment, or it never started)"
    try:
        why = _pickle_complete(pkl.read_bytes())
    except OSError as e:
        why = f"cannot be read ({e.strerror or e})"
    return f"{pkl} {why}" if why else None


def experiment_state_damage(exp_dir: Path) -> str | None:
    """What is wrong with the newest ``experiment_state-*.json`` (Tune's list of trials), or None."""
    states = sorted(exp_dir.glob(STATE_GLOB))
    if not states:
        return f"{exp_dir} has no {STATE_GLOB} (Tune's list of trials)"
    newest = max(states, key=lambda p: p.name)  # Tune resumes from the newest by name (a timestamp)
    try:
        state = json.loads(newest.read_text())  # plain JSON: cloudpickle payloads stay strings
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{newest} is cut short or corrupt ({type(e).__name__}: {e})"
    if not isinstance(state, dict) or "trial_data" not in state or "runner_data" not in state:
        return f"{newest} is not a Tune experiment state (no trial_data / runner_data)"
    return None


def kept_note(exp_dir: Path) -> str:
    """One sentence on the results a stopped resume leaves as they were."""
    from analysis.results_io import ResultsDamaged, read_results_files

    try:
        df, src, _ = read_results_files(exp_dir)
    except ResultsDamaged as e:
        return f"nothing was written ({e})"
    if df is None:
        return f"nothing was written (no results file in {exp_dir} yet; the trial directories are kept)"
    done = int((df["status"].astype(str) == "TERMINATED").sum()) if "status" in df else 0
    return f"nothing was written: {src} ({len(df)} trials, {done} finished) is kept unchanged"


def is_uri(s: str) -> bool:
    """A storage given as a URI (s3://, gs://, ...) rather than a local path."""
    return "://" in str(s)


def location(exp_dir: Path, meta: dict) -> tuple[str, str, list[str]]:
    """``(storage, name, notes)`` to resume ``exp_dir`` under. A local experiment is resumed where it is (storage =
    its parent, name = its basename; a note when ``space.json`` recorded another place); one whose Tune state lives
    at a URI keeps the recorded storage and name."""
    if is_uri(meta.get("storage", "")):
        return meta["storage"], meta["name"], []
    notes = []
    old = Path(meta["storage"]) / meta["name"] if meta.get("storage") and meta.get("name") else None
    if old is not None and old != exp_dir:
        notes.append(f"{exp_dir} was created as {old}: resuming it here ({old} is not used)")
        store = meta.get("store_root")
        if store and not is_uri(store) and not Path(store).exists():
            notes.append(f"the ticket store {store} named in space.json does not exist: the tickets of unfinished "
                         "trials will be made there again")
    return str(exp_dir.parent), exp_dir.name, notes


# ------------------------------------------------------------------ a full disk, and results from the trial dirs

def disk_full(path: Path, probe: int = 1 << 16) -> str | None:
    """``"no space left on device (N bytes free on the filesystem of PATH)"`` when a ``probe``-byte file cannot be
    written in ``path`` for lack of space, else None. How a failure whose own message hides it (Tune unpickling a
    0-byte ``error.pkl``: ``EOFError: Ran out of input``) is named as what it is."""
    import errno
    import shutil
    import tempfile

    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    try:
        with tempfile.TemporaryFile(dir=path) as fh:
            fh.write(b"\0" * probe)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on device ({free:,} bytes free on the filesystem of {path})"
    return None


class FileGuard:
    """Keep a good small file good while Tune may rewrite it (``tuner.pkl``: Ray's rewrite on a full disk opens it,
    truncating it, and writes nothing). :meth:`detach` renames the good file aside (``.<name>.kept``: a rename needs
    no free space) so that a rewrite makes a new file; :meth:`restore` keeps a whole new one, or renames the good one
    back. A crash in between leaves the kept copy, which :meth:`recover` (and every guard) puts back first."""

    def __init__(self, path: Path, check=lambda data: _pickle_complete(data)):
        self.path, self.check = Path(path), check
        self.keep = self.path.with_name(f".{self.path.name}.kept")
        self.detached = False
        self.recover(self.path, check)
        try:
            data = self.path.read_bytes()
        except OSError:
            data = None
        self.good = data if data is not None and check(data) is None else None

    @staticmethod
    def recover(path: Path, check=lambda data: _pickle_complete(data)) -> bool:
        """A kept copy a crash left beside ``path`` goes back in place unless ``path`` is whole; True if it did."""
        path = Path(path)
        keep = path.with_name(f".{path.name}.kept")
        if not keep.is_file() or keep.is_symlink():
            return False
        if _whole(path, check):
            keep.unlink(missing_ok=True)
            return False
        os.replace(keep, path)
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def detach(self) -> None:
        """Before Tune may rewrite the file: move the good one aside."""
        if self.good is not None and not self.detached:
            os.replace(self.path, self.keep)
            self.detached = True

    def restore(self) -> bool:
        """Put the good file back if the file is no longer whole; True if it did."""
        if self.good is None:
            return False
        if self.detached:
            self.detached = False
            if _whole(self.path, self.check):
                self.keep.unlink(missing_ok=True)
                return False
            os.replace(self.keep, self.path)  # a rename: works on a full disk
            return True
        if _whole(self.path, self.check):
            return False
        from sparsebert.engine.fsutil import atomic_write

        try:
            atomic_write(self.path, self.good)
        except OSError:  # no room for a temporary copy: in place (the cut file freed exactly that much)
            with open(self.path, "wb") as fh:
                fh.write(self.good)
        return True


def _whole(path: Path, check) -> bool:
    try:
        return path.is_file() and check(path.read_bytes()) is None
    except OSError:
        return False


def ray_trial_results(exp_dir: Path, only: set[str] | None = None) -> list:
    """The trials of a Ray Tune experiment read from their own directories (``params.json``, ``result.json``,
    ``error.txt``), whatever Tune's experiment state says: what is written when that state cannot be used. A
    trial that reached its last step (transfer) or made its ticket (find, evaluate) is finished (a failure Tune
    retried before is no error then); else one with ``error.txt`` failed; any other is unfinished (PENDING: a
    resume runs it). ``only``: these trial directory names only. Only a finished trial's result has a
    ``metrics_dataframe``."""
    import pandas as pd

    from .local import LocalResult

    out = []
    for d in sorted(p for p in exp_dir.iterdir() if p.is_dir() and (p / "params.json").is_file()
                    and (only is None or p.name in only)):
        try:
            config = json.loads((d / "params.json").read_text())
        except (OSError, ValueError):
            continue
        rows = []
        if (d / "result.json").is_file():
            for line in (d / "result.json").read_text(errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut by a full disk or a crash
                    pass
        last = dict(rows[-1]) if rows else {}
        total, step = last.get("total_steps"), last.get("step")
        if (last.get("stage") or config.get("stage")) == "transfer":  # its ticket_path is in every row
            finished = total is not None and step is not None and step >= total
        else:  # a ticket-finding or evaluation trial reports its ticket_path once the ticket is made
            finished = bool(last.get("ticket_path"))
        error = None
        if (d / "error.txt").is_file() and not finished:
            msg = (d / "error.txt").read_text(errors="replace").strip().splitlines()
            error = RuntimeError(msg[-1] if msg else "the trial failed (error.txt)")
        elif not finished:
            last.pop("training_iteration", None)  # unfinished: PENDING, its best so far is no score
        last.setdefault("trial_id", d.name)  # Tune puts the trial id in every row
        frame = pd.DataFrame(rows) if rows and finished else None
        out.append(LocalResult(last, config, error, str(d), frame))
    return out

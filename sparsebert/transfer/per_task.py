"""Transfer knobs set per task: ``lr: {per_task: {cola: 1.0e-4, mrpc: 2.0e-4}, default: 2.0e-4}``.

A value of this form in a ``transfer`` section is resolved, for each trial, to the value of the trial's task
(``per_task[task]``, else ``default``). Task names are the registry's (``sst-2`` is ``sst2``). The per-task values
are plain values (a search dimension cannot sit inside ``per_task``); ``task`` itself cannot be per task.
:func:`check` is what the space loader runs before anything starts; :func:`resolve_per_task` is what a trial sees.
"""

from __future__ import annotations

from typing import Any, Iterable

PER_TASK = "per_task"
DEFAULT = "default"
_MISSING = object()


class PerTaskError(ValueError):
    """A per-task value is malformed: ``key`` is the dotted key under the section (e.g. ``lr.per_task.colaa``)."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key, self.msg = key, msg


def is_per_task(v: Any) -> bool:
    return isinstance(v, dict) and PER_TASK in v


def _task(name: Any) -> str:
    from sparsebert.transfer.tasks import get_task

    return get_task(str(name)).name


def _known(name: Any) -> str | None:
    try:
        return _task(name)
    except ValueError:
        return None


def value_for(v: Any, task: Any) -> Any:
    """The value of ``v`` for ``task``: ``v`` itself unless it is a per-task value. KeyError: no value for the task."""
    if not is_per_task(v):
        return v
    name = _task(task)
    table = {_task(k): x for k, x in (v.get(PER_TASK) or {}).items()}
    if name in table:
        return table[name]
    if DEFAULT in v:
        return v[DEFAULT]
    raise KeyError(f"no value for task {name} (per_task has {', '.join(sorted(table))}) and no default")


def resolve_per_task(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """A transfer section (of one trial: ``task`` is a plain value) with every per-task value resolved."""
    if not section or not any(is_per_task(v) for v in section.values()):
        return section
    return {k: value_for(v, section.get("task")) for k, v in section.items()}


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with its ``transfer`` section resolved (unchanged when nothing in it is per task)."""
    tr = config.get("transfer")
    if not isinstance(tr, dict):
        return config
    out = resolve_per_task(tr)
    return config if out is tr else {**config, "transfer": out}


def check(section: dict[str, Any], tasks: Iterable[Any], is_dim=lambda v: False) -> None:
    """Every per-task value of a transfer ``section`` is well formed, names known tasks only, and has a value for
    each of ``tasks`` (the tasks the space can run). Raises :class:`PerTaskError` naming the key."""
    from sparsebert.transfer.tasks import task_names

    wanted = sorted({t for t in map(_known, tasks) if t})  # an unknown task itself is the task key's error
    for key, v in section.items():
        if isinstance(v, dict) and not is_per_task(v) and DEFAULT in v:
            raise PerTaskError(key, f"'{DEFAULT}' without '{PER_TASK}': write {{{PER_TASK}: {{TASK: VALUE}}, "
                                    f"{DEFAULT}: VALUE}}")
        if not is_per_task(v):
            continue
        if key == "task":
            raise PerTaskError(key, "the task cannot be set per task")
        extra = sorted(set(v) - {PER_TASK, DEFAULT})
        if extra:
            raise PerTaskError(f"{key}.{extra[0]}", f"unknown key; a per-task value has {PER_TASK} and "
                                                    f"(optionally) {DEFAULT}")
        table = v[PER_TASK]
        if not isinstance(table, dict) or not table:
            raise PerTaskError(f"{key}.{PER_TASK}", f"must be a non-empty mapping TASK: VALUE, got {table!r}")
        seen: dict[str, str] = {}
        for name, x in table.items():
            try:
                t = _task(name)
            except ValueError:
                raise PerTaskError(f"{key}.{PER_TASK}.{name}",
                                   f"unknown task; valid tasks are {', '.join(task_names())}") from None
            if t in seen:
                raise PerTaskError(f"{key}.{PER_TASK}.{name}", f"the same task as {seen[t]}")
            seen[t] = str(name)
            if is_dim(x) or isinstance(x, (dict, list)):
                raise PerTaskError(f"{key}.{PER_TASK}.{name}", "per-task values are plain values (no search "
                                                               "dimension or mapping inside per_task)")
        if DEFAULT in v and (is_dim(v[DEFAULT]) or isinstance(v[DEFAULT], (dict, list))):
            raise PerTaskError(f"{key}.{DEFAULT}", "a plain value (no search dimension or mapping)")
        missing = [t for t in wanted if t not in seen]
        if missing and DEFAULT not in v:
            raise PerTaskError(key, f"no value for task {', '.join(missing)} (per_task has "
                                    f"{', '.join(sorted(seen))}) and no {DEFAULT}")

"""GLUE TSV files: read one into columns (:func:`read_glue_tsv`) or check one without loading it
(:func:`check_glue_tsv`). Split on tab with quoting disabled (sentences hold unbalanced ``"``), BOMs stripped; a
row with the wrong number of columns or an unknown label is dropped with a warning naming the file and its line,
and counted (the trial's ``data_bad_rows``); a file with more than :data:`MAX_BAD_FRACTION` of them is refused.
Every error names the file and, where there is one, the line (a non-UTF-8 byte: its line and offset)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebert.transfer.tasks import TaskDataError, TaskSpec, get_task

logger = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"

def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a file (BOM stripped); a decode error names the file and the line (1-based) of the byte."""
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + skip  # offset in the file
        line = data.count(b"\n", 0, at) + 1
        raise TaskDataError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[at]:02x} at file offset {at}: {e.reason}); "
            f"save the file as UTF-8"
        ) from None


def _check_utf8(path: Path, chunk: int = 1 << 22) -> None:
    """The whole file decodes as UTF-8 (streamed: GBs per second on ASCII); else TaskDataError naming the line."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                dec.decode(block)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        _decode(path, path.read_bytes())  # a bad file: read whole to locate the byte (raises)
        raise  # unreachable unless the file changed under us


def _glue_header(spec: TaskSpec, path: Path, first: str) -> int:
    """Check a GLUE file's header line; return the row width it sets."""
    layout = spec.tsv
    header = first.split("\t")
    width = len(header)
    wanted = (*layout.text_positions, layout.label_position)
    found = tuple(header[p] if -width <= p < width else "" for p in wanted)
    if layout.header_names and found != layout.header_names:
        raise TaskDataError(
            f"{path}: line 1: header {header} does not look like a GLUE {spec.local_dir} file "
            f"(expected {layout.header_names} at columns {wanted}, found {found})"
        )
    return width


def _glue_row(spec: TaskSpec, fields: list[str], width: int, label_map: dict[str, int]) -> tuple[str, Any]:
    """("ok", label) for a usable row, else ("width" | "label", None)."""
    layout = spec.tsv
    if len(fields) != width:
        return "width", None
    raw = fields[layout.label_position].strip()
    if spec.kind == "regression":
        try:
            return "ok", float(raw)
        except ValueError:
            return "label", None
    if raw not in label_map:
        return "label", None
    return "ok", label_map[raw]


def _glue_layout(spec: TaskSpec | str) -> TaskSpec:
    spec = get_task(spec)
    if spec.tsv is None:
        raise ValueError(f"{spec.name} has no TSV layout")
    return spec


def _no_rows(spec: TaskSpec, path: Path, empty: bool) -> TaskDataError:
    if empty:
        return TaskDataError(f"{path}: empty file (expected {'a header line and ' if spec.tsv.has_header else ''}"
                             f"tab-separated rows)")
    return TaskDataError(f"{path}: no data rows: line 1 is the header and no row follows it")


def _no_usable_row(spec: TaskSpec, path: Path, width: int, bad_width: int, bad_label: int) -> TaskDataError:
    return TaskDataError(
        f"{path}: no usable row as a GLUE {spec.local_dir} file ({bad_width} rows with a column count other than "
        f"{width}, {bad_label} with a label outside {list(spec.raw_labels) or 'numbers'}): "
        f"wrong file for {spec.name}?"
    )


#: a GLUE file with more than this fraction of malformed rows (wrong column count, unknown label) is refused: it is
#: the wrong file or a damaged copy, not a few stray lines (the real GLUE files drop none of CoLA, MRPC, RTE, SST-2,
#: STS-B, QNLI's rows)
MAX_BAD_FRACTION = 0.01


@dataclass
class BadRows:
    """The malformed rows of one GLUE file: 1-based line numbers by what is wrong, out of ``rows`` data rows."""

    path: Path
    width: int
    rows: int = 0
    bad_width: list[int] = field(default_factory=list)
    bad_label: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.bad_width) + len(self.bad_label)

    def lines(self, limit: int = 10) -> str:
        def some(xs: list[int]) -> str:
            return ", ".join(map(str, xs[:limit])) + (f" and {len(xs) - limit} more" if len(xs) > limit else "")

        parts = [f"line{'s' if len(xs) > 1 else ''} {some(xs)} ({what})" for xs, what in (
            (self.bad_width, f"a column count other than {self.width}"), (self.bad_label, "an unknown label")) if xs]
        return "; ".join(parts)

    def check(self) -> None:
        """TaskDataError when more than :data:`MAX_BAD_FRACTION` of the rows are malformed."""
        if self.rows and self.count / self.rows > MAX_BAD_FRACTION:
            raise TaskDataError(
                f"{self.path}: {self.count} of {self.rows} rows ({self.count / self.rows:.1%}) are malformed, more "
                f"than the {MAX_BAD_FRACTION:.0%} allowed: {self.lines()}; wrong file or a damaged copy?")


def read_glue_tsv(spec: TaskSpec | str, path: str | Path) -> dict[str, list]:
    """Read one GLUE TSV into columns ``{*text_columns, 'label', 'idx'}`` (plain lists); see
    :func:`read_glue_tsv_rows` (which also returns the malformed rows)."""
    return read_glue_tsv_rows(spec, path)[0]


def read_glue_tsv_rows(spec: TaskSpec | str, path: str | Path) -> tuple[dict[str, list], BadRows]:
    """Read one GLUE TSV into columns ``{*text_columns, 'label', 'idx'}`` (plain lists) and its malformed rows.

    Split on tab with quoting disabled; BOM stripped; blank lines skipped; rows whose column count differs from the
    header's (or the fixed count of a header-less file) or whose label is unknown are dropped with a warning naming
    the file and their lines. A file that is not UTF-8, holds no data row (e.g. only the header), has another task's
    header, no usable row or more than :data:`MAX_BAD_FRACTION` malformed rows raises :class:`TaskDataError`
    naming the file (and the lines).
    """
    spec = _glue_layout(spec)
    layout = spec.tsv
    path = Path(path)
    text = _decode(path, path.read_bytes())
    lines = text.split("\n")
    rows = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    width = layout.num_columns
    first = 1  # the file line of rows[0]
    if layout.has_header:
        if not text.strip():
            raise _no_rows(spec, path, empty=True)
        width = _glue_header(spec, path, rows[0])
        rows, first = rows[1:], 2
    label_map = {raw: i for i, raw in enumerate(spec.raw_labels)}
    cols: dict[str, list] = {c: [] for c in spec.text_columns}
    labels: list = []
    idx: list[int] = []
    bad = BadRows(path, width)
    for n, row in enumerate(rows):
        if not row:
            continue
        bad.rows += 1
        fields = row.split("\t")
        status, label = _glue_row(spec, fields, width, label_map)
        if status == "width":
            bad.bad_width.append(n + first)
            continue
        if status == "label":
            bad.bad_label.append(n + first)
            continue
        for c, p in zip(spec.text_columns, layout.text_positions):
            cols[c].append(fields[p])
        labels.append(label)
        idx.append(n)
    if not labels:
        if bad.count:
            raise _no_usable_row(spec, path, width, len(bad.bad_width), len(bad.bad_label))
        raise _no_rows(spec, path, empty=not layout.has_header)
    bad.check()
    if bad.count:
        msg = (f"{path}: dropped {bad.count} malformed row(s) ({len(bad.bad_width)} with a column count other "
               f"than {width}, {len(bad.bad_label)} with an unknown label) of {bad.rows}: {bad.lines()}")
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    return {**cols, "label": labels, "idx": idx}, bad


def check_glue_tsv(spec: TaskSpec | str, path: str | Path) -> None:
    """What :func:`read_glue_tsv` would reject, found before a run: not UTF-8 anywhere, another task's header, no
    data row or no usable one, more than :data:`MAX_BAD_FRACTION` malformed rows. Streams the file."""
    spec = _glue_layout(spec)
    layout = spec.tsv
    path = Path(path)
    _check_utf8(path)
    label_map = {raw: i for i, raw in enumerate(spec.raw_labels)}
    bad = BadRows(path, layout.num_columns)
    empty, header = True, None  # header: the first line, checked before the first row (as read_glue_tsv does)
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh):
            line = raw.decode("utf-8").removeprefix("\ufeff" if n == 0 else "").removesuffix("\n").removesuffix("\r")
            empty = empty and not line.strip()
            if n == 0 and layout.has_header:
                header = line
                continue
            if not line:
                continue
            if header is not None:
                bad.width, header = _glue_header(spec, path, header), None
            bad.rows += 1
            status, _ = _glue_row(spec, line.split("\t"), bad.width, label_map)
            if status == "width":
                bad.bad_width.append(n + 1)
            elif status == "label":
                bad.bad_label.append(n + 1)
    if bad.rows > bad.count:
        bad.check()
        return
    if empty:
        raise _no_rows(spec, path, empty=True)
    if header is not None:
        _glue_header(spec, path, header)
    if bad.count:
        raise _no_usable_row(spec, path, bad.width, len(bad.bad_width), len(bad.bad_label))
    raise _no_rows(spec, path, empty=False)

"""Reading a table of training runs: column names, derived columns, validation."""
from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ._errors import LawfitError, LawfitWarning

# Column names recognised without a ``columns=`` mapping (compared case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "N": ("N", "params", "n_params", "parameters", "model_size", "model size", "num_params"),
    "D": ("D", "tokens", "n_tokens", "num_tokens", "training_tokens"),
    "C": ("C", "flops", "compute", "budget", "training_flop", "training flop", "training_flops", "flop"),
    "loss": ("loss", "final_loss", "eval_loss", "val_loss"),
}


def parse_columns(spec: "str | Mapping[str, str] | None") -> dict[str, str]:
    """``"N=params,D=tokens"`` or a dict -> {canonical name: column in the table}."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    out = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise LawfitError(f"bad column mapping {part!r}: write NAME=COLUMN, e.g. N=params")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _check_csv(path: Path) -> None:
    """Every data line has as many fields as the header (blank lines are skipped), and the
    file is UTF-8 text; otherwise a :class:`LawfitError` naming the line.  Read with no implicit
    index, a row with one extra field would otherwise shift every column by one."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            width = None
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise LawfitError(f"{path}: line {reader.line_num} has {len(row)} fields, but the header "
                                      f"has {width}; fix the row (no column is taken as an index)")
    except UnicodeDecodeError as exc:
        raise LawfitError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}); "
                          "save it as UTF-8 CSV") from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else "?"
        raise LawfitError(f"cannot read {path} as CSV: line {line}: {exc}") from None
    except OSError as exc:
        raise LawfitError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_table(table: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a mapping of columns, a CSV path, or the name of a shipped
    data set (:mod:`lawfit.datasets`; a file of that name in the working directory wins)."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, Mapping):
        return pd.DataFrame(dict(table))
    if isinstance(table, (str, os.PathLike)):
        from . import datasets

        path = Path(table)
        if not path.exists() and datasets.is_dataset(str(table)):
            return datasets.load(str(table))
        if not path.exists():
            raise LawfitError(f"file not found: {path} (and not a shipped data set: {', '.join(datasets.names())})")
        if path.is_dir():
            raise LawfitError(f"{path} is a directory, not a CSV file")
        _check_csv(path)
        try:
            return pd.read_csv(path, index_col=False, encoding="utf-8")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            raise LawfitError(f"cannot read {path} as CSV: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        except OSError as exc:
            raise LawfitError(f"cannot read {path}: {exc.strerror or exc}") from None
    raise LawfitError(f"a table is a pandas DataFrame, a CSV path or a data set name, got {type(table).__name__}")


def _find(df: pd.DataFrame, name: str, mapping: Mapping[str, str]) -> str | None:
    if name in mapping:
        col = mapping[name]
        if col not in df.columns:
            raise LawfitError(f"column {col!r} (given for {name}) is not in the table; columns: {', '.join(map(str, df.columns))}")
        return col
    if name in df.columns:
        return name
    lower = {str(c).strip().lower(): c for c in df.columns}
    for alias in ALIASES.get(name, (name,)):
        if alias.lower() in lower:
            return lower[alias.lower()]
    return None


def _numeric(df: pd.DataFrame, col: str, name: str) -> np.ndarray:
    raw = df[col]
    if pd.api.types.is_bool_dtype(raw):
        raise LawfitError(f"column {col!r} ({name}) holds true/false values, not numbers")
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(dtype=float)
    vals = pd.to_numeric(raw, errors="coerce")
    cand = vals.isna() & raw.notna()
    bad = cand.copy()
    if cand.any():      # text only where a value did not parse (cheap for large numeric tables)
        bad[cand] = raw[cand].astype(str).str.strip() != ""
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LawfitError(f"column {col!r} ({name}) has non-numeric values, e.g. {raw.iloc[i]!r} in row {i + 1}")
    return vals.to_numpy(dtype=float)


_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "==": np.equal, "!=": np.not_equal}
_TOP = re.compile(r"(?:highest[-_ ]?loss|highest|top)\s*[:=]\s*(\d+)", re.I)
_COND = re.compile(r"(.+?)\s*(<=|>=|==|!=|<|>)\s*([-+0-9.eE_]+)")


def parse_exclude(spec: Any) -> list[tuple]:
    """``exclude`` as a list of rules: ``("top", k)`` drops the k highest losses, ``(column, op,
    value)`` drops rows where the condition holds.  Accepted: an int k, ``"highest-loss:5"``,
    ``"N < 1e8"`` / ``"Model Size >= 1e10"``, or a list of these."""
    if spec is None:
        return []
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    rules: list[tuple] = []
    for item in items:
        if isinstance(item, bool):
            raise LawfitError(f"exclude: expected a number of runs or a rule, got {item!r}")
        if isinstance(item, (int, np.integer)):
            if item < 0:
                raise LawfitError(f"exclude: the number of highest-loss runs to drop must be >= 0, got {item}")
            rules.append(("top", int(item)))
            continue
        text = str(item).strip()
        m = _TOP.fullmatch(text)
        if m:
            rules.append(("top", int(m.group(1))))
            continue
        m = _COND.fullmatch(text)
        if not m:
            raise LawfitError(f"exclude: cannot read {text!r}; write highest-loss:K or COLUMN OP NUMBER "
                              "(OP one of < <= > >= == !=), e.g. 'N < 1e8'")
        try:
            v = float(m.group(3).replace("_", ""))
        except ValueError:
            raise LawfitError(f"exclude: {m.group(3)!r} in {text!r} is not a number") from None
        rules.append((m.group(1).strip(), m.group(2), v))
    return rules


def _apply_exclude(out: pd.DataFrame, raw: pd.DataFrame, rules: list[tuple], target: str,
                   mapping: Mapping[str, str]) -> tuple[np.ndarray, list[str]]:
    """Mask of rows of ``out`` to keep (``raw`` holds the same rows with the user's columns)."""
    keep = np.ones(len(out), bool)
    notes = []
    for rule in rules:
        if rule[0] == "top":
            k = rule[1]
            if k == 0:
                continue
            if k >= int(keep.sum()):
                raise LawfitError(f"exclude: dropping the {k} highest losses leaves no runs ({int(keep.sum())} left)")
            y = np.where(keep, out[target].to_numpy(float), -np.inf)
            drop = np.argsort(-y, kind="stable")[:k]
            keep[drop] = False
            notes.append(f"excluded the {k} highest-loss runs")
            continue
        col, op, v = rule
        if col in out.columns:
            vals = out[col].to_numpy(float)
        else:
            c = _find(raw, col, mapping) if col in ALIASES else (col if col in raw.columns else None)
            if c is None:
                raise LawfitError(f"exclude: no column {col!r}; columns: "
                                  f"{', '.join(map(str, list(out.columns) + list(raw.columns)))}")
            vals = _numeric(raw, c, col)
        hit = keep & _OPS[op](vals, v)
        keep &= ~hit
        notes.append(f"excluded {int(hit.sum())} runs with {col} {op} {v:g}")
    return keep, notes


def load_runs(table: Any, needed: Iterable[str], columns: "str | Mapping[str, str] | None" = None,
              target: str = "loss", min_rows: int = 1, exclude: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """Pick, derive and validate the columns a law needs.

    Returns a DataFrame with exactly ``needed + [target]`` canonical columns, all finite and
    positive, and a list of notes (which column was used for what, what was derived).  Rows
    with missing, infinite or non-positive values are dropped with a :class:`LawfitWarning`;
    text in a numeric column, a missing column, or too few rows raise :class:`LawfitError`.
    ``D`` missing but ``N`` and ``C`` present: ``D = C / (6 N)``; ``C`` missing: ``C = 6 N D``.
    """
    df = read_table(table)
    mapping = parse_columns(columns)
    needed = list(dict.fromkeys(list(needed) + [target]))
    notes: list[str] = []
    found = {n: _find(df, n, mapping) for n in set(needed) | {"N", "D", "C"}}
    data: dict[str, np.ndarray] = {}
    for n in needed:
        col = found.get(n)
        if col is not None:
            data[n] = _numeric(df, col, n)
            if col != n:
                notes.append(f"{n} from column {col!r}")
            continue
        if n == "D" and found.get("N") is not None and found.get("C") is not None:
            data["D"] = _numeric(df, found["C"], "C") / (6.0 * _numeric(df, found["N"], "N"))
            notes.append(f"D derived as C/(6N) from columns {found['C']!r} and {found['N']!r}")
            continue
        if n == "C" and found.get("N") is not None and found.get("D") is not None:
            data["C"] = 6.0 * _numeric(df, found["N"], "N") * _numeric(df, found["D"], "D")
            notes.append(f"C derived as 6ND from columns {found['N']!r} and {found['D']!r}")
            continue
        hint = "" if n not in ("D", "C") else " (or give N and C so that D = C/(6N), or N and D so that C = 6ND)"
        raise LawfitError(
            f"the table has no column for {n}{hint}; columns: {', '.join(map(str, df.columns))}; "
            f"map one with columns={{'{n}': 'COLUMN'}} (CLI: --columns {n}=COLUMN)")
    out = pd.DataFrame(data)
    n_all = len(out)
    if n_all == 0:
        raise LawfitError("the table has no rows")
    vals = out.to_numpy(dtype=float)
    missing = ~np.isfinite(vals)
    nonpos = np.isfinite(vals) & (vals <= 0)
    drop = missing.any(1) | nonpos.any(1)
    if drop.any():
        why = []
        for j, n in enumerate(out.columns):
            if missing[:, j].any():
                why.append(f"{int(missing[:, j].sum())} missing/non-finite {n}")
            if nonpos[:, j].any():
                why.append(f"{int(nonpos[:, j].sum())} non-positive {n}")
        rows = np.flatnonzero(drop)
        shown = ", ".join(str(int(r) + 1) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
        msg = f"dropped {int(drop.sum())} of {n_all} rows ({'; '.join(why)}; rows {shown})"
        warnings.warn(msg, LawfitWarning, stacklevel=3)
        notes.append(msg)
        out = out[~drop].reset_index(drop=True)
        df = df[~drop].reset_index(drop=True)
    rules = parse_exclude(exclude)
    if rules:
        keep, ex_notes = _apply_exclude(out, df.reset_index(drop=True), rules, target, mapping)
        notes += ex_notes
        out = out[keep].reset_index(drop=True)
    dup = out.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        shown = ", ".join(str(int(r) + 1) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
        msg = (f"{int(dup.sum())} of {len(out)} rows repeat an earlier row exactly (rows {shown} of the used "
               "table); each copy counts as a separate run and weighs that run more")
        warnings.warn(msg, LawfitWarning, stacklevel=3)
        notes.append(msg)
    if len(out) < min_rows:
        raise LawfitError(f"{len(out)} usable rows, but at least {min_rows} are needed")
    return out, notes

"""Reading a table of training runs: column names, derived columns, validation."""
from __future__ import annotations

import os
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


def read_table(table: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a mapping of columns, or a CSV path."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, Mapping):
        return pd.DataFrame(dict(table))
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.exists():
            raise LawfitError(f"file not found: {path}")
        if path.is_dir():
            raise LawfitError(f"{path} is a directory, not a CSV file")
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise LawfitError(f"cannot read {path} as CSV: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    raise LawfitError(f"a table is a pandas DataFrame or a CSV path, got {type(table).__name__}")


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
    vals = pd.to_numeric(raw, errors="coerce")
    bad = vals.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LawfitError(f"column {col!r} ({name}) has non-numeric values, e.g. {raw.iloc[i]!r} in row {i + 1}")
    return vals.to_numpy(dtype=float)


def load_runs(table: Any, needed: Iterable[str], columns: "str | Mapping[str, str] | None" = None,
              target: str = "loss", min_rows: int = 1) -> tuple[pd.DataFrame, list[str]]:
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
    if len(out) < min_rows:
        raise LawfitError(f"{len(out)} usable rows, but at least {min_rows} are needed")
    return out, notes

"""Data sets of published training runs, shipped with the package (no download, no path outside the package).

    >>> from flopscale import lawfit
    >>> lawfit.datasets.names()
    ['chinchilla_fig4_epoch', 'isoflops_compiled', 'porian_refinedweb_isoflop']
    >>> df = lawfit.datasets.load("chinchilla_fig4_epoch")

``load`` returns the file as it is (a pandas DataFrame with the source's own column names);
``info(name)`` gives its provenance.  Provenance and licence notes for every file are in
``lawfit/data/README.md`` (shipped as package data as well).
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

from ._errors import LawfitError

_INFO: dict[str, str] = {
    "chinchilla_fig4_epoch": (
        "245 Chinchilla runs extracted from Figure 4 of Hoffmann et al. 2022 (columns 'Model Size' = N, "
        "'Training FLOP' = C, loss in nats/token); epoch-research/analyzing-chinchilla commit 9225883, "
        "as used by Besiroglu et al. 2024 (who drop the five highest losses)"),
    "isoflops_compiled": (
        "947 IsoFLOP points from several studies (column 'experiment' selects one); "
        "Open-Athena/scaling-law-analysis commit 3e0656e"),
    "porian_refinedweb_isoflop": (
        "121 IsoFLOP points on RefinedWeb, tuned optimiser (Porian et al. 2024; columns flops, N, D, loss); "
        "formll/resolving-scaling-law-discrepancies commit 0dc60d9"),
}


def names() -> list[str]:
    """Names of the shipped data sets."""
    return sorted(_INFO)


def _key(name: object) -> str | None:
    if not isinstance(name, str):
        return None
    k = name.strip().lower()
    if k.endswith(".csv"):
        k = k[:-4]
    return k if k in _INFO else None


def is_dataset(name: object) -> bool:
    """Whether ``name`` names a shipped data set (``name`` or ``name.csv``)."""
    return _key(name) is not None


def info(name: str) -> str:
    """One line of provenance for a data set."""
    k = _key(name)
    if k is None:
        raise LawfitError(f"unknown data set {name!r}; choose from {', '.join(names())}")
    return _INFO[k]


def path(name: str):
    """The shipped file (an importlib.resources Traversable)."""
    k = _key(name)
    if k is None:
        raise LawfitError(f"unknown data set {name!r}; choose from {', '.join(names())}")
    return resources.files(__package__).joinpath("data", f"{k}.csv")


def load(name: str) -> pd.DataFrame:
    """The data set as a DataFrame (the shipped CSV, columns as in the source)."""
    with path(name).open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh)

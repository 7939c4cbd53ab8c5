"""Data sets shipped inside lawfit (package data): names, loading, use by name in fit and the
CLI, and leaving runs out (--exclude).  Nothing here reads a path outside the package."""
from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from flopscale import lawfit
from flopscale.profiler.cli import main


def test_names_and_load_give_the_shipped_tables():
    assert lawfit.datasets.names() == ["chinchilla_fig4_epoch", "isoflops_compiled", "porian_refinedweb_isoflop"]
    # row counts and columns as documented in lawfit/data/README.md
    sizes = {"chinchilla_fig4_epoch": 245, "isoflops_compiled": 947, "porian_refinedweb_isoflop": 121}
    for name, rows in sizes.items():
        df = lawfit.datasets.load(name)
        assert isinstance(df, pd.DataFrame) and len(df) == rows, name
        assert np.all(np.isfinite(pd.to_numeric(df["loss"]))), name
    assert {"Model Size", "Training FLOP", "loss"} <= set(lawfit.datasets.load("chinchilla_fig4_epoch").columns)
    assert list(lawfit.datasets.load("porian_refinedweb_isoflop").columns) == ["flops", "N", "D", "loss"]
    with pytest.raises(lawfit.LawfitError, match="unknown data set"):
        lawfit.datasets.load("chinchilla")
    readme = resources.files("flopscale.lawfit").joinpath("data", "README.md").read_text()
    assert "9225883" in readme and "Licence" in readme        # provenance and licence notes ship too


def test_fit_by_name_with_the_replications_exclusion_reaches_besiroglu2024():
    """Besiroglu et al. 2024 (arXiv:2404.10102), Table 1 refit: the 240 lowest-loss runs give
    E 1.8172, alpha 0.3478, beta 0.3658 (A, B differ in the 3rd digit, see published.py)."""
    res = lawfit.fit("chinchilla_fig4_epoch", exclude="highest-loss:5", starts=300, seed=0)
    assert res.n_rows == 240
    assert any("excluded the 5 highest-loss runs" in n for n in res.notes)
    assert res.params["E"] == pytest.approx(1.8172, rel=2e-3)
    assert res.params["alpha"] == pytest.approx(0.3478, abs=2e-3)
    assert res.params["beta"] == pytest.approx(0.3658, abs=3e-3)
    full = lawfit.datasets.load("chinchilla_fig4_epoch")
    assert res.data["loss"].max() == pytest.approx(np.sort(full["loss"].to_numpy())[-6])


def test_exclude_rules():
    df = lawfit.datasets.load("chinchilla_fig4_epoch")
    runs, notes = lawfit._data.load_runs(df, ["N", "D"], exclude=["Model Size < 1e8", 3])
    n_small = int((df["Model Size"] < 1e8).sum())
    assert 0 < n_small and len(runs) == len(df) - n_small - 3
    assert runs["N"].min() >= 1e8
    runs2, _ = lawfit._data.load_runs(df, ["N", "D"], exclude="C >= 1e21")
    assert (6 * runs2["N"] * runs2["D"]).max() < 1e21 and len(runs2) < len(df)
    for bad in ("N <> 3", "highest-loss:x", "nope > 1"):
        with pytest.raises(lawfit.LawfitError, match="exclude"):
            lawfit._data.load_runs(df, ["N", "D"], exclude=bad)


def test_cli_fit_takes_a_data_set_name_and_exclude(capsys):
    rc = main(["fit", "chinchilla_fig4_epoch", "--exclude", "highest-loss:5", "--starts", "200", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    d = json.loads(out)
    assert d["n_rows"] == 240 and d["params"]["E"] == pytest.approx(1.8172, rel=3e-3)
    rc = main(["fit", "porian_refinedweb_isoflop", "--law", "isoflop", "--bootstrap", "20",
               "--exclude", "flops > 1e19", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert max(b["C"] for b in json.loads(out)["budgets"]) <= 1e19
    assert main(["fit", "no_such_data_set"]) == 2
    err = capsys.readouterr().err
    assert "not a shipped data set" in err and "Traceback" not in err


def test_tests_do_not_read_the_shared_folder():
    """A fresh clone has nothing beside the repository: no test or module builds a path out of it."""
    import re
    from pathlib import Path

    pattern = re.compile(r"[\"']shared[\"'] */ *[\"']data|[/\\]shared[/\\]data|\.\./shared")
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("tests/*.py"), *(f for d in ("kernels", "profiler", "lawfit", "benchmarks")
                                         for f in (root / d).rglob("*.py"))]
    assert len(files) > 50
    offenders = [str(f.relative_to(root)) for f in files if pattern.search(f.read_text())]
    assert offenders == []

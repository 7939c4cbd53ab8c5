"""flopscale fit / flopscale allocate: text and JSON output, saved fits, figures, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flopscale import lawfit
from flopscale.profiler.cli import main



@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    """Noisy synthetic runs of a known Chinchilla law, with the user's own column names."""
    rng = np.random.default_rng(5)
    law = lawfit.Chinchilla(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)
    N = 10 ** rng.uniform(7.5, 10, 80)
    D = 10 ** rng.uniform(9, 11.5, 80)
    df = pd.DataFrame({"params": N, "tokens": D, "val": law(N=N, D=D) * np.exp(0.005 * rng.standard_normal(80))})
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    df.to_csv(path, index=False)
    return path


def _one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if "warning" not in l]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_fit_text_json_save_and_plot(runs_csv, tmp_path, capsys):
    save, png = tmp_path / "fit.json", tmp_path / "fit.png"
    rc = main(["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--starts", "200",
               "--bootstrap", "30", "--save", str(save), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "chinchilla fit" in out and "95% interval" in out and "alpha" in out and "loss*params^alpha" in out
    assert "s wall clock, 1 process" in out           # 200 starts: one batch, never split
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fit = lawfit.load_fit(save)
    assert fit.params["alpha"] == pytest.approx(0.35, abs=0.03) and fit.n_bootstrap + fit.bootstrap_failed == 30
    rc = main(["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--starts", "50", "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 0 and obj["law"]["name"] == "chinchilla" and obj["converged"] is True
    assert set(obj["params"]) == {"E", "A", "B", "alpha", "beta"} and obj["n_rows"] == 80


def test_allocate_table_from_saved_fit_and_published_json(runs_csv, tmp_path, capsys):
    save = tmp_path / "fit.json"
    assert main(["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--starts", "100",
                 "--bootstrap", "20", "--save", str(save)]) == 0
    capsys.readouterr()
    rc = main(["allocate", "--fit", str(save), "--compute", "1e21,1e23", "--compute", "1e25", "--max-tokens", "1e12"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [l for l in out.splitlines() if l.strip().startswith(("1.000e+21", "1.000e+23", "1.000e+25"))]
    assert len(rows) == 3 and "repeated data" in rows[2] and "95% intervals" in out and "[FLOP]" in out
    rc = main(["allocate", "--fit", str(save), "--compute", "1e25", "--max-tokens", "1e12", "--no-repeat"])
    assert rc == 0 and "D capped" in capsys.readouterr().out
    rc = main(["allocate", "--law", "hoffmann2022", "--compute", "5.76e23", "--params", "7e10", "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert obj["allocations"][0]["N"] == pytest.approx(4.04e10, rel=2e-3)   # Hoffmann et al. 2022: ~40 B
    assert obj["allocations"][0]["ci"] == {}
    inv = obj["inverse"][0]
    assert inv["N"] == 7e10 and 6 * inv["N"] * inv["D"] == pytest.approx(inv["compute_flop"], rel=1e-9)
    rc = main(["allocate", "--compute", "1000pfd", "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert obj["allocations"][0]["compute_flop"] == pytest.approx(8.64e22)
    assert "besiroglu2024" in obj["allocations"][0]["law"]


def test_fit_isoflop_and_one_variable_law(tmp_path, capsys):
    png = tmp_path / "iso.png"
    rc = main(["fit", "porian_refinedweb_isoflop", "--law", "isoflop", "--bootstrap", "50",
               "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0 and "N_opt =" in out and png.exists()
    df = lawfit.datasets.load("porian_refinedweb_isoflop")
    best = df.loc[df.groupby("flops")["loss"].idxmin()]
    path = tmp_path / "frontier.csv"
    best.to_csv(path, index=False)
    rc = main(["fit", str(path), "--law", "power_law", "--columns", "x=flops", "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 0 and obj["law"]["name"] == "power_law" and 0 < obj["params"]["c"] < 1


def test_bad_input_is_one_line_and_nonzero(runs_csv, tmp_path, capsys):
    cases = [
        (["fit", str(tmp_path / "missing.csv")], "file not found"),
        (["fit", str(runs_csv)], "no column for loss"),
        (["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--law", "chinchila"], "unknown law"),
        (["fit", str(runs_csv), "--columns", "N=nope"], "not in the table"),
        (["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--starts", "many"], "--starts"),
        (["fit", str(runs_csv), "--columns", "N=params,D=tokens,loss=val", "--workers", "0"], "workers must be a positive"),
        (["allocate"], "--compute"),
        (["allocate", "--compute", "abc"], "must be a number"),
        (["allocate", "--compute", "0"], "positive"),
        (["allocate", "--compute", "1e24", "--law", "kaplan2021"], "unknown law"),
        (["allocate", "--compute", "1e24", "--fit", str(runs_csv)], "not JSON"),
    ]
    for argv, msg in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert msg in _one_error_line(err), (argv, err)
    text = pd.DataFrame({"N": ["1e9", "2e9", "x", "4e9", "5e9", "6e9"], "D": [1e10] * 6, "loss": [3.0] * 6})
    p = tmp_path / "text.csv"
    text.to_csv(p, index=False)
    assert main(["fit", str(p)]) == 2
    assert "non-numeric" in _one_error_line(capsys.readouterr().err)
    few = tmp_path / "few.csv"
    pd.read_csv(runs_csv).iloc[:4].to_csv(few, index=False)
    assert main(["fit", str(few), "--columns", "N=params,D=tokens,loss=val"]) == 2
    assert "not identifiable" in _one_error_line(capsys.readouterr().err)


def test_dropped_rows_are_a_warning_on_stderr(runs_csv, tmp_path, capsys):
    df = pd.read_csv(runs_csv)
    df.loc[3, "val"] = np.nan
    df.loc[7, "tokens"] = 0
    p = tmp_path / "holes.csv"
    df.to_csv(p, index=False)
    rc = main(["fit", str(p), "--columns", "N=params,D=tokens,loss=val", "--starts", "60", "--json"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "warning: dropped 2 of 80 rows" in cap.err
    assert json.loads(cap.out)["n_rows"] == 78

"""Published allocation laws (N_opt = k C^a), the law-name list, IsoFLOP fits as allocation laws,
repeated-data allocation (Muennighoff et al. 2023) and inference-aware allocation (Sardana et
al. 2024), each against the papers' numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flopscale import lawfit
from flopscale.profiler.cli import main


def test_law_names_lists_every_law_allocate_takes():
    names = lawfit.law_names()
    for n in ("hoffmann2022", "hoffmann2022_rounded", "besiroglu2024", "kaplan2020", "hoffmann2022_approach1",
              "hoffmann2022_approach2", "deepseek2024", "llama3_2024"):
        assert n in names
    for n in names:                       # every listed name allocates, with its citation and N's meaning
        a = lawfit.allocate(1e22, law=n)
        assert a.N > 0 and a.D > 0 and a.n_counts and a.citation, n
        # C = 6ND (DeepSeek's C = M D with M = 6N: its constants multiply to 1.0001)
        assert 6 * a.N * a.D == pytest.approx(1e22, rel=1e-9 if n != "deepseek2024" else 2e-4), n
    with pytest.raises(lawfit.LawfitError, match="unknown law"):
        lawfit.allocate(1e22, law="chinchilla2099")


@pytest.mark.parametrize("name,rows", [
    # Hoffmann et al. 2022, Table 3 (Approach 1): (parameters, FLOPs)
    ("hoffmann2022_approach1", [(400e6, 1.92e19), (10e9, 1.23e22), (67e9, 5.76e23), (1e12, 1.27e26), (10e12, 1.30e28)]),
    # Hoffmann et al. 2022, Table A3 (Approach 2): (parameters, FLOPs)
    ("hoffmann2022_approach2", [(400e6, 1.84e19), (10e9, 1.32e22), (67e9, 6.88e23), (1e12, 1.59e26), (10e12, 1.75e28)]),
])
def test_hoffmann_approach1_and_2_reproduce_the_papers_projections(name, rows):
    for N, C in rows:
        a = lawfit.allocate(C, law=name)
        assert a.N == pytest.approx(N, rel=0.05), (name, C, a.N)
        assert a.loss is None and a.D == pytest.approx(C / (6 * a.N))


def test_deepseek2024_is_in_non_embedding_flops_per_token_and_converted_to_n():
    """DeepSeek LLM (arXiv:2401.02954) Eq. 4: M_opt = 0.1715 C^0.5243, D_opt = 5.8316 C^0.4757, C = M D."""
    rng = np.random.default_rng()
    C = 10 ** rng.uniform(20, 26)
    a = lawfit.allocate(C, law="deepseek2024")
    M = 0.1715 * C ** 0.5243
    assert a.D == pytest.approx(5.8316 * C ** 0.4757, rel=1e-12)
    assert a.N == pytest.approx(M / 6, rel=1e-12)
    assert M * a.D == pytest.approx(C, rel=1e-3)                  # the paper's C = M D
    assert "M/6" in a.n_counts and "non-embedding" in a.n_counts
    inv = lawfit.optimal_for_params(a.N, law="deepseek2024")
    assert inv.compute == pytest.approx(C, rel=1e-9)


def test_llama3_2024_isoflop_law():
    """Llama 3 (arXiv:2407.21783) Sec. 3.2.1: D*(C) = 0.299 C^0.537; at 3.8e25 FLOP the paper
    extrapolates to a 402 B model on 16.55 T tokens."""
    a = lawfit.allocate(3.8e25, law="llama3_2024")
    assert a.D == pytest.approx(16.55e12, rel=0.02)
    assert a.N == pytest.approx(402e9, rel=0.05)
    assert a.N == pytest.approx(3.8e25 / (6 * a.D))


def test_power_law_spec_and_its_errors(capsys):
    a = lawfit.allocate(1e24, law="power:k=0.1,a=0.5")
    assert a.N == pytest.approx(0.1 * 1e12) and a.D == pytest.approx(1e24 / (6e11))
    b = lawfit.allocate(1e24, law="power:d=2,b=0.5")
    assert b.D == pytest.approx(2e12) and b.N == pytest.approx(1e24 / 12e12)
    for bad in ("power:k=0.1", "power:k=-1,a=0.5", "power:k=1,a=1.5", "power:q=1", "power:k=x,a=0.5"):
        with pytest.raises(lawfit.LawfitError, match="power"):
            lawfit.allocate(1e24, law=bad)
    assert main(["allocate", "--law", "power:k=0.1,a=0.5", "--compute", "1e24", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["allocations"][0]
    assert d["N"] == pytest.approx(1e11) and d["loss"] is None and d["epochs"] == 1.0
    with pytest.raises(lawfit.LawfitError, match="allocation law"):
        lawfit.predict_loss(1e9, 1e10, law="deepseek2024")


def test_isoflop_fit_is_accepted_by_allocate(tmp_path, capsys):
    save = tmp_path / "iso.json"
    assert main(["fit", "porian_refinedweb_isoflop", "--law", "isoflop", "--bootstrap", "20", "--save", str(save)]) == 0
    capsys.readouterr()
    rc = main(["allocate", "--fit", str(save), "--compute", "1e21", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    a = json.loads(out)["allocations"][0]
    iso = json.loads(save.read_text())
    assert a["N"] == pytest.approx(iso["n_opt"]["coef"] * 1e21 ** iso["n_opt"]["exponent"], rel=1e-9)
    assert a["D"] == pytest.approx(iso["d_opt"]["coef"] * 1e21 ** iso["d_opt"]["exponent"], rel=1e-9)
    assert "isoflop" in a["law"]


def test_repeated_data_follows_muennighoff2023():
    """Muennighoff et al. 2023 (arXiv:2305.16264), Eq. 5 with R*_D = 15.387, R*_N = 5.309: up to
    about 4 epochs repetition costs little loss (their finding: 'negligible'), and far more
    repetition is worth at most U (1 + R*_D) tokens."""
    law = "hoffmann2022"
    C = 1e23
    free = lawfit.allocate(C, law=law)
    U = free.D / 4
    a = lawfit.allocate(C, law=law, max_tokens=U, repeat=True)
    r = a.repetition
    assert r["R_D_star"] == 15.387 and r["R_N_star"] == 5.309
    assert a.epochs == pytest.approx(a.D / U) and a.epochs > 1 and a.to_dict()["epochs"] == a.epochs
    assert 0 < r["loss_cost"] < 0.01 * free.loss                   # a few epochs: under 1% of the loss
    assert r["loss_cost"] < r["loss_if_capped_at_U"] - free.loss     # repeating beats stopping at U
    RD = a.D / U - 1
    assert r["effective_D"] == pytest.approx(U + U * 15.387 * (1 - math.exp(-RD / 15.387)), rel=1e-9)
    # with very little unique data, effective data saturate near U (1 + R*_D)
    tiny = lawfit.allocate(C, law=law, max_tokens=free.D / 1000, repeat=True)
    assert tiny.repetition["effective_D"] <= (free.D / 1000) * (1 + 15.387) * (1 + 1e-9)
    assert tiny.repetition["loss_cost"] > 5 * r["loss_cost"]
    # enough unique data: no repetition, one epoch
    loose = lawfit.allocate(C, law=law, max_tokens=free.D * 2, repeat=True)
    assert loose.epochs == 1.0 and loose.repetition is None and loose.N == pytest.approx(free.N)


def test_inference_aware_allocation_matches_sardana2024_figure1():
    """Sardana et al. 2024 (arXiv:2401.00448), Figure 1: instead of a Chinchilla-optimal 13 B model,
    with 2 T tokens of inference demand, train a ~7 B model longer: 1.7e22 FLOP (17%) saved."""
    ref = lawfit.optimal_for_params(13e9, law="hoffmann2022")
    a = lawfit.allocate(ref.compute, law="hoffmann2022", inference_tokens=2e12)
    i = a.inference
    assert a.N == pytest.approx(7e9, rel=0.05)
    assert i["flop_saved"] == pytest.approx(1.7e22, rel=0.1)
    assert i["flop_saved_fraction"] == pytest.approx(0.17, abs=0.015)
    assert a.loss == pytest.approx(ref.loss, rel=1e-6)               # the same loss
    assert i["past_chinchilla"] > 1 and a.tokens_per_param > ref.tokens_per_param
    assert i["total_flop"] == pytest.approx(6 * a.N * a.D + 2 * a.N * 2e12)
    none = lawfit.allocate(ref.compute, law="hoffmann2022", inference_tokens=1.0)
    assert none.N == pytest.approx(13e9, rel=0.01)                   # no inference: Chinchilla's answer
    with pytest.raises(lawfit.LawfitError, match="Chinchilla form"):
        lawfit.allocate(1e22, law="deepseek2024", inference_tokens=1e12)


def test_cli_allocate_says_which_budget_and_reports_epochs(capsys):
    assert main(["allocate", "--law", "kaplan2020", "--compute", "1e21", "--compute-is", "C_min"]) == 0
    out = capsys.readouterr().out
    assert "budget: C_min" in out and "7.768e+09" in out          # 1.3e9 * (1e21 / PF-day)^0.73
    assert main(["allocate", "--law", "hoffmann2022", "--compute", "1e23", "--max-tokens", "1e11", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)["allocations"][0]
    assert a["epochs"] > 1 and a["repetition"]["loss_cost"] > 0
    assert main(["allocate", "--law", "hoffmann2022", "--compute", "1e22", "--inference-tokens", "1e13"]) == 0
    assert "inference-aware" in capsys.readouterr().out


def test_repeated_data_loss_is_muennighoffs_data_constrained_law():
    """Muennighoff et al. 2023, Eq. 5 with their fit (E 1.87, A 521, B 1488, alpha = beta = 0.353,
    R*_N 5.309, R*_D 15.387, U_N = min(N, N_opt(U_D)) where N_opt(U_D) = 0.051 U_D for this law)."""
    from flopscale.lawfit.allocation import _Repeated

    law = lawfit.published.muennighoff2023.law
    rng = np.random.default_rng()
    U = 10 ** rng.uniform(9, 11)
    N = 10 ** rng.uniform(8, 10.5, 20)
    D = U * rng.uniform(1, 60, 20)
    UN = np.minimum(0.0512 * U, N)
    RN = np.maximum(N / UN - 1, 0)
    RD = D / U - 1
    ref = (521 / (UN + 5.309 * UN * (1 - np.exp(-RN / 5.309))) ** 0.353
           + 1488 / (U + 15.387 * U * (1 - np.exp(-RD / 15.387))) ** 0.353 + 1.87)
    got = _Repeated(law, U).evaluate(law.params, N, D)
    np.testing.assert_allclose(got, ref, rtol=2e-4)
    a = lawfit.allocate(1e22, law="muennighoff2023", max_tokens=U, repeat=True)
    assert a.loss == pytest.approx(float(_Repeated(law, U).evaluate(law.params, a.N, a.D)))

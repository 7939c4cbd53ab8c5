"""flopscale plan: shapes, the allocation fixed point, budgets, and the command end to end.

Published check: Hoffmann et al. 2022, Approach 3 (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28)
under C = 6ND gives N_opt = G (C/6)^a with G = (alpha A / (beta B))^(1/(alpha+beta)),
a = beta/(alpha+beta); for C = 5.76e23 (Chinchilla's budget) N_opt is about 3.22e10.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flopscale.profiler import budget
from flopscale.profiler.flopcount import flops_per_token
from flopscale.profiler.model import param_counts
from flopscale.profiler.plan import LawBackend, family, neighbours, plan_budget, shape_for

E, A, B_, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
G = (ALPHA * A / (BETA * B_)) ** (1 / (ALPHA + BETA))
a_exp = BETA / (ALPHA + BETA)


def chinchilla_loss(N, D):
    return E + A / N**ALPHA + B_ / D**BETA


def closed_form_allocator(C, flops_per_token=None, max_tokens=None):
    """Hoffmann's closed form under C = 6ND (used with exact_count=False only)."""
    assert flops_per_token is None
    N = G * (C / 6) ** a_exp
    D = C / (6 * N)
    return SimpleNamespace(N=N, D=D, loss=chinchilla_loss(N, D), ci={})


# Hoffmann et al. 2022's printed (rounded) constants: lawfit's name for them
from flopscale import lawfit  # noqa: E402

ROUNDED = "hoffmann2022_rounded" if "hoffmann2022_rounded" in lawfit.published.names() else "hoffmann2022"

LAW = LawBackend("hoffmann2022-closed-form", allocator=closed_form_allocator, loss_fn=chinchilla_loss, count="total")


def along_family(p, C, factor):
    """Hoffmann's loss at N_opt * factor on the budget C, with the family's FLOPs per token."""
    n = p.N_opt * factor
    return chinchilla_loss(n, C / float(family(n)["flops_per_token"]))


@pytest.mark.parametrize("target", [3e7, 1.25e8, 7.7e8, 3.3e9, 2.1e10, 7e10, 4.4e11, 1.8e12])
@pytest.mark.parametrize("count", ["total", "non_embedding"])
def test_shape_for_hits_the_target(target, count):
    cfg = shape_for(target, n_ctx=2048, vocab=32000, count=count)
    pc = param_counts(cfg)
    n = pc.total if count == "total" else pc.non_embedding
    assert abs(math.log(n / target)) < 0.03
    assert cfg.d_model % cfg.n_head == 0 and cfg.head_dim in (64, 128)
    assert 16 <= cfg.d_model / cfg.n_layer <= 256


@pytest.mark.parametrize("target", [5e8, 7e9, 9e10])
def test_family_flops_match_concrete_shapes(target):
    cfg = shape_for(target)
    pc = param_counts(cfg)
    f = family(pc.total)
    # the continuous family and the concrete shape of the same N agree on the exact count
    assert float(f["flops_per_token"]) == pytest.approx(flops_per_token(cfg), rel=0.03)
    assert float(f["total"]) == pytest.approx(pc.total, rel=1e-9)


def test_plan_with_constant_mfu_spends_the_budget():
    peak, mfu = 989e12, budget.MFUModel.constant(0.4)
    p = plan_budget(LawBackend(ROUNDED), gpus=1024, days=30, peak_flop_per_s=peak, mfu=mfu)
    C = 1024 * 30 * 86400 * peak * 0.4
    assert p.compute_flop == pytest.approx(C, rel=1e-12)
    assert p.converged
    # N_opt minimises the law along the budget with the family's exact FLOPs per token
    best = along_family(p, C, 1.0)
    for factor in (0.9, 0.97, 1.03, 1.1):
        assert best < along_family(p, C, factor)
    # the concrete shape: exact count, tokens that fill the budget, 30 days of wall-clock
    assert p.flops_per_token == flops_per_token(p.shape)
    assert p.D_shape * p.flops_per_token == pytest.approx(C, rel=1e-12)
    assert p.time.wall_clock_days == pytest.approx(30, rel=1e-9)
    assert p.time.gpu_days == pytest.approx(30 * 1024, rel=1e-9)
    assert abs(math.log(p.N_shape / p.N_opt)) < 0.03
    assert p.loss_shape == pytest.approx(chinchilla_loss(p.N_shape, p.D_shape))
    # with the exact count the tokens are fewer than under 6N at the same budget
    six = plan_budget(LAW, compute=C, exact_count=False)
    assert p.D_opt < six.D_opt


def test_plan_under_six_n_reproduces_hoffmann_closed_form():
    p = plan_budget(LAW, compute=5.76e23, exact_count=False)
    assert p.N_opt == pytest.approx(G * (5.76e23 / 6) ** a_exp, rel=1e-12)
    assert p.N_opt == pytest.approx(3.22e10, rel=0.01)


def test_published_law_through_lawfit():
    law = LawBackend(ROUNDED)
    assert law.count == "total"
    p = plan_budget(law, compute=5.76e23, exact_count=False)
    assert p.N_opt == pytest.approx(3.22e10, rel=0.01)
    assert LawBackend("kaplan2020").count == "non_embedding"


def test_measured_mfu_sweep_is_iterated_to_a_fixed_point():
    peak = 989e12
    law = LawBackend("hoffmann2022")
    sweep = budget.MFUModel([(1e8, 0.2), (1e9, 0.3), (1e10, 0.45), (1e11, 0.5)], "measured")
    p = plan_budget(law, gpus=512, days=20, peak_flop_per_s=peak, mfu=sweep)
    assert p.converged and p.iterations > 1
    # the budget was computed at the MFU of the size it buys ...
    assert p.budget.mfu == pytest.approx(sweep(float(family(p.N_opt)["total"])), rel=1e-6)
    assert p.compute_flop == pytest.approx(budget.compute_budget(512, 20, peak, p.budget.mfu), rel=1e-12)
    # ... and that size is the optimum for that budget
    again = plan_budget(law, compute=p.compute_flop)
    assert again.N_opt == pytest.approx(p.N_opt, rel=1e-6)
    const = plan_budget(law, gpus=512, days=20, peak_flop_per_s=peak, mfu=budget.MFUModel.constant(0.3))
    assert (p.N_opt > const.N_opt) == (p.budget.mfu > 0.3)


def test_neighbours_scale_monotonically_and_max_tokens_caps():
    kw = dict(gpus=64, peak_flop_per_s=989e12, mfu=budget.MFUModel.constant(0.4))
    rows = neighbours(LawBackend("hoffmann2022"), (0.25, 0.5, 2, 4), days=10, **kw)
    ns = [q.N_opt for _, q in rows]
    losses = [q.loss_opt for _, q in rows]
    assert ns == sorted(ns) and losses == sorted(losses, reverse=True)
    capped = LawBackend("hoffmann2022", max_tokens=1e10)
    p = plan_budget(capped, days=10, **kw)
    assert p.D_shape <= 1e10 * (1 + 1e-12)
    assert any("max-tokens" in n for n in p.notes)


def test_bad_budgets():
    with pytest.raises(ValueError):
        plan_budget(LAW, compute=-1.0)
    with pytest.raises(ValueError):
        plan_budget(LAW, gpus=0, days=1, peak_flop_per_s=1e15, mfu=budget.MFUModel.constant(0.4))


# ----------------------------------------------------------------------------------------- CLI


def run_main(capsys, *argv):
    from flopscale.profiler.cli import main

    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_explicit_plan_json_and_report(capsys, tmp_path):
    report = tmp_path / "plan.md"
    rc, out, err = run_main(capsys, "plan", "--gpu", "h100-sxm", "--gpus", "256", "--days", "14", "--mfu", "0.35",
                            "--law", "hoffmann2022", "--json", "--report", str(report))
    assert rc == 0, err
    d = json.loads(out)
    # C = GPUs x days x peak x MFU at scale: the given MFU 0.35 times the compute share of the best layout's step
    st = d["layouts"]["top"][0]["step"]
    assert d["budget"]["mfu"] == pytest.approx(0.35 * st["compute_s"] / st["step_s"], rel=1e-9)
    assert d["budget"]["mfu"] == pytest.approx(d["mfu_at_scale"], rel=1e-9) and d["mfu_at_scale"] < 0.35
    C = 256 * 14 * 86400 * 989e12 * d["budget"]["mfu"]
    assert d["compute_flop"] == pytest.approx(C, rel=1e-12)
    assert d["pf_days"] == pytest.approx(C / 8.64e19)
    for key in ("N", "D", "loss", "shape", "wall_clock_days", "flops_per_token", "gpu_days", "neighbours",
                "layout", "memory_per_gpu_bytes"):
        assert key in d
    assert set(d["layout"]) == {"tp", "pp", "dp", "zero_stage", "micro_batch", "recompute"}
    assert d["layout"]["tp"] * d["layout"]["pp"] * d["layout"]["dp"] == 256
    assert 0 < d["memory_per_gpu_bytes"] <= 0.9 * 80 * 2**30
    assert d["wall_clock_days"] == pytest.approx(14, rel=1e-9)
    assert d["shape"]["d_model"] % d["shape"]["n_head"] == 0
    assert report.exists() and (tmp_path / "plan_frontier.png").stat().st_size > 1000
    assert "![" in report.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.md", "plan_frontier.png"]  # no temp files


def test_cli_inverse(capsys):
    rc, out, err = run_main(capsys, "plan", "--gpu", "h200", "--gpus", "64", "--mfu", "0.5", "--params", "7e9",
                            "--tokens", "1.4e12", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["compute_flop"] == pytest.approx(d["flops_per_token"] * 1.4e12)
    assert d["mode"] == "inverse" and d["layout"]["tp"] * d["layout"]["pp"] * d["layout"]["dp"] == 64
    st = d["layouts"]["top"][0]["step"]
    assert d["mfu_at_scale"] == pytest.approx(0.5 * st["compute_s"] / st["step_s"], rel=1e-12)
    assert d["gpu_days"] == pytest.approx(d["compute_flop"] / (989e12 * d["mfu_at_scale"]) / 86400, rel=1e-9)
    assert d["wall_clock_days"] == pytest.approx(d["gpu_days"] / 64, rel=1e-12)


@pytest.mark.parametrize("argv,match", [
    (["--gpus", "0", "--days", "3"], "--gpus must be positive"),
    (["--gpus", "8", "--days", "-2"], "--days must be positive"),
    (["--compute", "0"], "--compute must be positive"),
    (["--gpus", "8", "--mfu", "1.5"], "MFU must be in (0, 1]"),
    (["--gpus", "8", "--mfu", "0"], "MFU must be in (0, 1]"),
    (["--gpu", "tpu-v9", "--gpus", "8"], "unknown device"),
    (["--gpus", "8", "--law", "no-such-law"], "unknown"),
    (["--gpus", "8", "--fit", "/no/such/fit.json"], "not found"),
    (["--gpus", "8", "--tokens", "1e9"], "--tokens needs --params"),
    (["--gpus", "1.5", "--days", "3"], "--gpus must be a whole number"),
])
def test_cli_bad_input_is_one_line(capsys, argv, match):
    rc, out, err = run_main(capsys, "plan", *argv)
    assert rc == 2
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_measured_file_from_another_card(capsys, tmp_path):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"device": {"key": "h200", "name": "NVIDIA H200"}, "dtype": "bf16",
                             "params": {"total": 1e9}, "achieved_flop_per_s": 4e14}))
    rc, _, err = run_main(capsys, "plan", "--gpu", "h100-sxm", "--gpus", "8", "--measured", str(m))
    assert rc == 2 and "h200" in err and "h100-sxm" in err
    rc, out, err = run_main(capsys, "plan", "--gpu", "h200", "--gpus", "8", "--measured", str(m), "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["mfu"] == pytest.approx(4e14 / 989e12)
    assert d["budget"]["mfu"] == pytest.approx(d["mfu"] * d["layouts"]["top"][0]["step"]["efficiency"], rel=1e-9)
    assert "measured" in d["budget"]["mfu_source"]


def test_cli_fit_with_bootstrap_gives_intervals(capsys, tmp_path):
    """A user's fit (Besiroglu et al. 2024's data, a few bootstrap refits) brings intervals into the plan."""
    from flopscale import lawfit
    import pandas as pd

    df = lawfit.datasets.load("chinchilla_fig4_epoch").rename(columns={"Model Size": "N", "Training FLOP": "C"})
    df["D"] = df["C"] / (6 * df["N"])
    df = df.sort_values("loss").iloc[:-5]
    fit = lawfit.fit(df[["N", "D", "loss"]], law="chinchilla", bootstrap=12, starts=20, seed=1)
    path = tmp_path / "fit.json"
    path.write_text(fit.to_json())
    rc, out, err = run_main(capsys, "plan", "--fit", str(path), "--compute", "1e22", "--no-neighbours", "--json")
    assert rc == 0, err
    d = json.loads(out)
    for key in ("N", "D", "loss"):
        lo, hi = d["ci"][key]
        assert lo < d[key] < hi, key
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    rc, _, err = run_main(capsys, "plan", "--fit", str(bad), "--compute", "1e22")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_flopscale_plan_without_arguments_end_to_end():
    """The README's first command: measures this machine, plans a day of it and a default card's table."""
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "flopscale", "plan", "--json"], capture_output=True, text=True,
                          timeout=180, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["mode"] == "default"
    for key in ("compute_flop", "N", "D", "loss", "shape", "wall_clock_days"):
        assert d[key] is not None, key
    m = d["measured"]
    assert m["model_flops"] > 0 and m["achieved_flop_per_s"] > 0
    # one day of this machine at its measured model-FLOP rate
    assert d["compute_flop"] == pytest.approx(86400 * m["achieved_flop_per_s"], rel=1e-9)
    assert d["wall_clock_days"] == pytest.approx(1.0, rel=1e-6)
    if m["device"]["kind"] == "cpu":
        assert m["impl"] == "torch" and "torch reference path" in m["note"]
    card = d["default_card"]
    assert card["device"] == "h100-sxm" and card["mfu"] == 0.4 and "assumed" in card["mfu_source"]
    ns = [row["N"] for row in d["table"]]
    assert len(ns) >= 4 and ns == sorted(ns)
    for row in d["table"]:
        assert row["compute_flop"] == pytest.approx(row["gpus"] * row["days"] * 86400 * 989e12 * 0.4, rel=1e-12)


# ----------------------------------------------------- issue 18: warnings carried, no NaN, refusals in one line


def _allocator(N, D, loss, **extra):
    def alloc(C, flops_per_token=None, max_tokens=None):
        return SimpleNamespace(N=N, D=D, loss=loss, ci={}, **extra)
    return alloc


def test_lawfit_warnings_reach_the_plan_text_and_dict():
    from flopscale.profiler.plan_text import plan_lines

    edge = "the optimum is at the edge of the searched range of 1e-4..1e6 tokens/param"
    law = LawBackend("edge", allocator=_allocator(1e9, 2e10, 2.5, method=f"numerical (WARNING: {edge})"),
                     loss_fn=chinchilla_loss, count="total")
    p = plan_budget(law, compute=1.2e20, exact_count=False)
    assert p.warnings == [edge] and p.to_dict()["warnings"] == [edge]
    assert any(line.strip() == f"WARNING: {edge}" for line in plan_lines(p, law))
    law2 = LawBackend("listed", allocator=_allocator(1e9, 2e10, 2.5, warnings=["not identifiable"]),
                      loss_fn=chinchilla_loss, count="total")
    assert plan_budget(law2, compute=1.2e20, exact_count=False).warnings == ["not identifiable"]


def test_nan_allocations_are_refused_and_nan_losses_not_printed():
    from flopscale.profiler.plan_text import plan_lines

    bad = LawBackend("nan", allocator=_allocator(float("nan"), float("nan"), float("nan")), loss_fn=chinchilla_loss,
                     count="total")
    with pytest.raises(ValueError, match="no finite allocation"):
        plan_budget(bad, compute=1e21, exact_count=False)
    half = LawBackend("lossless", allocator=_allocator(1e9, 2e10, float("nan")),
                      loss_fn=lambda n, d: float("nan"), count="total")
    p = plan_budget(half, compute=1.2e20, exact_count=False)
    assert p.loss_opt is None and p.loss_shape is None
    text = "\n".join(plan_lines(p, half))
    assert "nan" not in text.lower() and "predicted loss n/a" in text


@pytest.mark.parametrize("compute", ["1e30", "1e41", "1e60"])
def test_budgets_beyond_the_family_are_refused(capsys, compute):
    rc, out, err = run_main(capsys, "plan", "--compute", compute, "--no-neighbours")
    assert rc == 2 and out == ""
    assert "beyond the largest model this family shapes" in err and len(err.strip().splitlines()) == 1


def test_the_largest_budget_planned_keeps_6nd_honest(capsys):
    rc, out, err = run_main(capsys, "plan", "--compute", "1e28", "--no-neighbours", "--json")
    assert rc == 0, err
    d = json.loads(out)
    sp = d["shape_params"]
    assert sp["non_embedding"] < sp["total"]
    assert d["flops_per_token"] * d["shape_D"] == pytest.approx(d["compute_flop"], rel=1e-9)
    assert 1.0 <= d["ratio_exact_to_6N"] < 1.1


def test_measured_file_faults_are_one_line(capsys, tmp_path):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"device": {"key": "h100-sxm"}, "dtype": "bf16", "achieved_flop_per_s": True}))
    rc, _, err = run_main(capsys, "plan", "--gpu", "h100-sxm", "--gpus", "8", "--measured", str(m))
    assert rc == 2 and "must be a number, got true" in err and len(err.strip().splitlines()) == 1
    m.write_text(json.dumps({"device": {"key": ["h100-sxm"]}, "achieved_flop_per_s": 4e14}))
    rc, _, err = run_main(capsys, "plan", "--gpus", "8", "--measured", str(m))
    assert rc == 2 and "must be a string" in err and len(err.strip().splitlines()) == 1
    m.write_bytes(b"\xff\xfe{}")
    rc, _, err = run_main(capsys, "plan", "--gpus", "8", "--measured", str(m))
    assert rc == 2 and "not UTF-8" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["/proc/plan.md", "missing-dir/plan.md", "."])
def test_report_path_is_checked_before_the_work(capsys, tmp_path, monkeypatch, where):
    import flopscale.profiler.planner as planner

    def boom(**kw):
        raise AssertionError("planned before checking --report")
    monkeypatch.setattr(planner, "make_plan", boom)
    target = where if where.startswith("/") else str(tmp_path / where)
    rc, _, err = run_main(capsys, "plan", "--gpus", "8", "--report", target)
    assert rc == 2 and "--report" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- --arch gpt2 | llama | moe


@pytest.mark.parametrize("arch, kw", [("llama", {}), ("moe", {}), ("moe", {"n_experts": 64, "top_k": 4})])
@pytest.mark.parametrize("target", [3e8, 7e9, 9e10])
def test_family_matches_concrete_shapes_of_each_arch(arch, kw, target):
    from flopscale.profiler.plan import law_params

    cfg = shape_for(target, arch=arch, **kw)
    assert cfg.arch == arch
    pc = param_counts(cfg)
    n = law_params(pc, "total")
    assert n == pc.active and abs(math.log(n / target)) < 0.03  # the law's N: parameters a token uses
    f = family(n, arch=arch, **kw)
    assert float(f["flops_per_token"]) == pytest.approx(flops_per_token(cfg), rel=0.02)
    assert float(f["stored_total"]) == pytest.approx(pc.total, rel=0.02)


@pytest.mark.parametrize("argv", [["--arch", "llama"], ["--arch", "moe", "--n-experts", "16", "--top-k", "2"]])
def test_cli_arch_plans_with_that_architecture(capsys, argv):
    from flopscale.profiler.model import GPTConfig

    rc, out, err = run_main(capsys, "plan", "--gpus", "64", "--days", "10", "--no-neighbours", "--json", *argv)
    assert rc == 0, err
    d = json.loads(out)
    shape = {k: v for k, v in d["shape"].items() if k != "head_dim"}
    cfg = GPTConfig(**shape)
    assert cfg.arch == argv[1]
    assert d["flops_per_token"] == flops_per_token(cfg)
    pc = param_counts(cfg)
    assert d["shape_N"] == pc.active
    assert d["shape_D"] * d["flops_per_token"] == pytest.approx(d["compute_flop"], rel=1e-9)
    top = d["layouts"]["top"][0]
    lay = d["layout"]
    # memory holds every stored parameter (all experts), sharded by the layout
    assert top["memory"]["params_per_gpu"] * lay["tp"] * lay["pp"] >= 0.9 * pc.total
    if cfg.arch == "moe":
        assert (cfg.experts_, cfg.top_k_) == (16, 2) and pc.total > 3 * pc.active


def test_cli_arch_options_refused_in_one_line(capsys):
    rc, _, err = run_main(capsys, "plan", "--gpus", "8", "--arch", "llama", "--n-experts", "8")
    assert rc == 2 and "--n-experts and --top-k belong to --arch moe" in err
    rc, _, err = run_main(capsys, "plan", "--gpus", "8", "--arch", "moe", "--n-experts", "4", "--top-k", "5")
    assert rc == 2 and "--top-k must be in [1, --n-experts]" in err


# ------------------------------------------------- law names pass through to lawfit; --params alone


@pytest.mark.parametrize("name", ["deepseek2024", "llama3_2024", "power:k=0.1,a=0.5"])
def test_any_lawfit_allocation_law_name_plans(capsys, name):
    if not hasattr(lawfit, "law_names"):
        pytest.skip("lawfit without allocation laws")
    rc, out, err = run_main(capsys, "plan", "--compute", "1e23", "--law", name, "--count", "6n", "--no-neighbours",
                            "--json")
    assert rc == 0, err
    d = json.loads(out)
    ref = lawfit.allocate(1e23, law=name)
    assert d["N"] == pytest.approx(ref.N, rel=1e-9) and d["D"] == pytest.approx(ref.D, rel=1e-9)
    assert d["loss"] is None and "nan" not in out.lower()
    assert d["warnings"] == list(getattr(ref, "warnings", []) or [])


def test_params_alone_is_allocate_params(capsys):
    rc, out, err = run_main(capsys, "plan", "--gpus", "8", "--params", "7e9", "--count", "6n", "--json")
    assert rc == 0, err
    d = json.loads(out)
    ref = lawfit.optimal_for_params(7e9, law="besiroglu2024")
    assert d["mode"] == "params" and d["D"] == pytest.approx(ref.D, rel=1e-12)
    assert d["compute_flop"] == pytest.approx(d["flops_per_token"] * ref.D, rel=1e-12)
    rc, out, err = run_main(capsys, "plan", "--gpus", "8", "--params", "7e9")
    assert rc == 0 and "as 'allocate --params'" in out


# ------------------------------------------------------- property: exit 0 with finite numbers, or one line and 2


def test_numeric_arguments_property(capsys):
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                       st.sampled_from([0.0, -1.0, 1.5, 1e-30, 1e30, 3.0, 0.4, 1.0]))
    gpus = st.one_of(st.integers(min_value=-4, max_value=4096).map(float), number)

    @hyp.settings(max_examples=12, deadline=None, derandomize=True,
                  suppress_health_check=list(hyp.HealthCheck))
    @hyp.given(gpus=gpus, days=number, mfu=number)
    @hyp.example(gpus=64.0, days=3.0, mfu=0.4)
    @hyp.example(gpus=1.5, days=3.0, mfu=0.4)
    @hyp.example(gpus=4096.0, days=1e30, mfu=1.0)
    def check(gpus, days, mfu):
        capsys.readouterr()
        try:
            rc, out, err = run_main(capsys, "plan", f"--gpus={gpus!r}", f"--days={days!r}", f"--mfu={mfu!r}",
                                    "--no-neighbours", "--json")
        except SystemExit as exc:  # argparse's own one-line errors
            cap = capsys.readouterr()
            rc, out, err = exc.code, cap.out, cap.err
        if rc == 0:
            d = json.loads(out)
            for key in ("compute_flop", "N", "D", "wall_clock_days", "memory_per_gpu_bytes", "mfu_at_scale"):
                assert isinstance(d[key], float) and math.isfinite(d[key]) and d[key] > 0, key
        else:
            assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    check()


def test_intervals_with_nan_ends_are_left_out():
    law = LawBackend("nan-ci", allocator=(
        lambda C, flops_per_token=None, max_tokens=None: SimpleNamespace(
            N=1e9, D=2e10, loss=2.5, ci={"N": (9e8, 1.1e9), "D": (float("nan"), 3e10), "loss": (2.4, float("inf"))})),
        loss_fn=chinchilla_loss, count="total")
    p = plan_budget(law, compute=1.2e20, exact_count=False)
    assert p.ci == {"N": (9e8, 1.1e9)}

"""flopscale audit: one training step profiled launch by launch, against an independent count."""
from __future__ import annotations

import json

import pytest
import torch

from flopscale.profiler.audit import run_audit, scope_labels
from flopscale.profiler.devices import Ceilings
from flopscale.profiler.model import GPT, GPTConfig, param_counts

CEILINGS = Ceilings(flops={"fp32": 2.0e11}, bandwidth=2.0e10, device_name="test ceiling")


def expected_groups(cfg: GPTConfig, B: int, S: int) -> dict[str, tuple[int, int]]:
    """(forward, backward) model FLOPs per group, written out for this test.

    Forward: every matmul 2*M*N*K; causal attention 2*B*H*D*P for Q K^T and as much for P V
    with P = S(S+1)/2.  Backward: twice the forward (dX and dW; dQ, dK and dP, dV).
    """
    d, hd, L = cfg.d_model, cfg.d_model // cfg.n_head, cfg.n_layer
    kv = cfg.n_kv_head or cfg.n_head
    T, P = B * S, S * (S + 1) // 2
    fwd = {
        "qkv": L * 2 * T * d * (cfg.n_head + 2 * kv) * hd,
        "attn_scores": L * 2 * B * cfg.n_head * hd * P,
        "attn_pv": L * 2 * B * cfg.n_head * hd * P,
        "out_proj": L * 2 * T * d * d,
        "mlp": L * 2 * 2 * T * d * (cfg.d_ff or 4 * d),
        "logits": 2 * T * d * cfg.vocab,
    }
    return {g: (f, 2 * f) for g, f in fwd.items()}


CFG = GPTConfig(2, 48, 4, 40, 97, n_kv_head=2, d_ff=136)
B, S = 3, 37  # ragged: S < n_ctx


@pytest.fixture(scope="module")
def torch_audit():
    return run_audit(CFG, B, seq=S, impl="torch", device="cpu", ceilings=CEILINGS, time_budget_s=0.2)


def test_model_flops_equal_an_independent_sum(torch_audit):
    r = torch_audit
    exp = expected_groups(CFG, B, S)
    assert r.model_flops == sum(f + b for f, b in exp.values())
    for g, (f, b) in exp.items():
        assert r.breakdown[g]["forward"] == f, g
        assert r.breakdown[g]["backward"] == b, g
    assert r.breakdown["other"]["model_flops"] == 0  # every matmul launch was attributed
    # torch's CPU attention recomputes Q K^T in its backward: executed = model + one more Q K^T
    assert r.executed_flops == r.model_flops + exp["attn_scores"][0]
    assert r.breakdown["backward_recompute"]["backward"] == exp["attn_scores"][0]
    assert r.tokens == B * S


def test_non_matmul_and_optimizer_work_is_counted_apart(torch_audit):
    b = torch_audit.breakdown
    assert b["softmax_norm_elementwise"]["nonmatmul_flops"] > 0
    assert b["optimizer"]["nonmatmul_flops"] > 0 and b["optimizer"]["launches"] > 0
    assert b["optimizer"]["model_flops"] == 0


def test_estimates_and_their_explanations(torch_audit):
    r = torch_audit
    pc = param_counts(CFG)
    names = [e.name for e in r.estimates]
    assert any("6ND (non-embedding" in n for n in names) and any("6ND (total" in n for n in names)
    assert any("Kaplan" in n for n in names) and any("PaLM" in n for n in names)
    assert any("Appendix F" in n for n in names)
    six = next(e for e in r.estimates if e.name.startswith("6ND (non-embedding"))
    assert six.flops == 6 * pc.non_embedding * B * S
    assert six.ratio == pytest.approx(r.model_flops / (6 * pc.non_embedding * B * S))
    for e in r.estimates:
        assert abs(e.residual) < 1e-9 * r.model_flops, e.name
    d = r.to_dict()
    for key in ("model_flops", "executed_flops", "six_nd", "estimates", "breakdown", "params", "tokens"):
        assert key in d
    assert d["six_nd"] == six.flops


def test_flop_counter_cross_check(torch_audit):
    fc = torch_audit.flop_counter
    exp = expected_groups(CFG, B, S)
    attention = sum(sum(exp[g]) for g in ("attn_scores", "attn_pv"))
    if not any("attention" in k for k in fc["by_op"]):
        # no formula for the CPU SDPA kernel: FlopCounterMode sees the matmuls only
        assert fc["total"] == torch_audit.model_flops - attention
    assert "dense" in fc["note"]


def test_mfu_uses_the_given_ceiling(torch_audit):
    r = torch_audit
    t = r.timing["step_s"]
    assert t > 0 and r.timing["repetitions"] >= 1
    # the time budget (0.2 s) bounds the repetitions: at least one, never many past the budget
    assert (r.timing["repetitions"] - 1) * r.timing["min_s"] <= 2 * 0.2
    assert r.mfu["value"] == pytest.approx(r.model_flops / t / 2.0e11)
    assert r.hfu["value"] == pytest.approx(r.executed_flops / t / 2.0e11)
    assert "test ceiling" in r.mfu["peak_source"]


def test_kernels_path_counts_the_same_model_flops():
    """The Triton path (interpreter on a CPU): same model FLOPs; executed adds what the kernels declare."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = GPTConfig(1, 32, 2, 16, 50, n_kv_head=1)
    r = run_audit(cfg, 2, seq=13, impl="kernels", device=device, timed=False, flop_counter=True)
    exp = expected_groups(cfg, 2, 13)
    assert r.model_flops == sum(f + b for f, b in exp.values())
    for g, (f, b) in exp.items():
        assert (r.breakdown[g]["forward"], r.breakdown[g]["backward"]) == (f, b), g
    extra = r.breakdown["backward_recompute"]["executed_flops"] + r.breakdown["masked_work"]["executed_flops"]
    assert r.executed_flops == r.model_flops + extra
    assert r.breakdown["backward_recompute"]["executed_flops"] >= exp["attn_scores"][0]
    # FlopCounterMode counts the flopscale ops by their registered (model) formulas
    assert r.flop_counter["total"] == r.model_flops


def test_labels_are_removed_after_the_step():
    from flopscale.profiler.record import current_scope

    model = GPT(GPTConfig(1, 16, 2, 8, 11))
    with scope_labels(model) as phase:
        with phase("forward"):
            assert current_scope() == "forward"
            model(torch.zeros(1, 5, dtype=torch.long))
    assert current_scope() == ""
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in model.modules())


def test_cli_audit_json_and_bad_input(capsys):
    from flopscale.profiler.cli import main

    rc = main(["audit", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--n-ctx", "16", "--vocab", "40",
               "--batch", "2", "--time-budget", "0.05", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    exp = expected_groups(GPTConfig(1, 32, 2, 16, 40), 2, 16)
    assert out["model_flops"] == sum(f + b for f, b in exp.values())
    assert out["tokens"] == 32 and out["params"]["total"] == param_counts(GPTConfig(1, 32, 2, 16, 40)).total
    assert out["achieved_flop_per_s"] > 0 and out["device"]["kind"] in ("cpu", "cuda")
    rc = main(["audit", "--d-model", "100", "--n-head", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "divisible" in err and len(err.strip().splitlines()) == 1
    assert main(["audit", "--batch", "0"]) == 2


def test_sweep_plot_is_written_as_a_png(tmp_path):
    from flopscale.profiler.cli import main

    png = tmp_path / "sweep.png"
    rc = main(["audit", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--n-ctx", "16", "--vocab", "64",
               "--batch", "1", "--sweep", "--plot", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.png"]  # no temporary left behind


@pytest.mark.parametrize("budget", ["inf", "nan", "0", "-1"])
def test_cli_audit_refuses_a_time_budget_that_is_not_finite_and_positive(capsys, budget):
    from flopscale.profiler.cli import main

    rc = main(["audit", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--n-ctx", "16", "--vocab", "40",
               f"--time-budget={budget}"])
    err = capsys.readouterr().err
    assert rc == 2 and "--time-budget" in err and len(err.strip().splitlines()) == 1

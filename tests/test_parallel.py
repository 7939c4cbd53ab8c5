"""Layouts: memory per GPU, the step time a layout costs, and the search -- against published numbers.

Sources:
* Rajbhandari et al. 2020 (ZeRO), Sec. 3.1 and Figure 1: mixed-precision Adam keeps 2 + 2 + 12 = 16
  bytes per parameter; a 7.5B-parameter model on 64 data-parallel GPUs needs 120 GB per GPU
  without ZeRO, 31.4 GB with P_os (stage 1), 16.6 GB with P_os+g (stage 2) and 1.9 GB with
  P_os+g+p (stage 3).
* Korthikanti et al. 2022, Table 2: activation bytes per layer ``sbh(34 + 5as/h)``; with tensor
  parallelism alone ``sbh(10 + 24/t + 5as/(ht))``; with sequence parallelism and selective
  recompute ``34 sbh / t``; the abstract: the two techniques cut activation memory by about 5x.
  Table 3 / Narayanan et al. 2021 Table 1: the 530B model (105 layers, h 20480, 128 heads,
  s 2048) runs at t = 8, p = 35 on A100 80GB GPUs.
* Narayanan et al. 2021, Sec. 2.2: the 1F1B pipeline bubble is (p-1)/m of the ideal time.
"""
from __future__ import annotations

import json
import random

import pytest

from flopscale.profiler import memory as M
from flopscale.profiler import parallel as P
from flopscale.profiler.flopcount import flops_per_token
from flopscale.profiler.model import GPTConfig, param_counts

GB = 1e9


@pytest.mark.parametrize("stage, expect_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_figure1_memory_of_a_7_5b_model_on_64_gpus(stage, expect_gb):
    per = M.model_state_bytes_per_param(stage, 64)
    assert M.model_state_bytes_per_param(0, 1)["total"] == 16.0  # 2 + 2 + 12
    assert 7.5e9 * per["total"] / GB == pytest.approx(expect_gb, abs=0.05)


def test_zero_shares_shard_what_each_stage_says():
    dp = random.randint(2, 1000)
    s1, s2, s3 = (M.model_state_bytes_per_param(k, dp) for k in (1, 2, 3))
    assert (s1["weights"], s1["gradients"], s1["optimizer"]) == (2.0, 2.0, 12.0 / dp)
    assert (s2["weights"], s2["gradients"], s2["optimizer"]) == (2.0, 2.0 / dp, 12.0 / dp)
    assert s3["total"] == pytest.approx(16.0 / dp)
    with pytest.raises(ValueError):
        M.model_state_bytes_per_param(4, 8)


def test_korthikanti_table2_activation_forms():
    s, b, h, a = 2048, random.randint(1, 4), 12288, 96  # GPT-3 175B: 5as/h = 80
    sbh = s * b * h
    assert M.activation_bytes_per_layer(s, b, h, a) == pytest.approx(sbh * (34 + 80))
    t = 8
    tp_only = M.activation_bytes_per_layer(s, b, h, a, t, sequence_parallel=False)
    assert tp_only == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    sp = M.activation_bytes_per_layer(s, b, h, a, t)
    assert sp == pytest.approx(sbh * (34 + 80) / t)
    sel = M.activation_bytes_per_layer(s, b, h, a, t, "selective")
    assert sel == pytest.approx(34 * sbh / t)
    assert M.activation_bytes_per_layer(s, b, h, a, t, "full") == pytest.approx(2 * sbh / t)
    # the abstract's "reduce activation memory by 5x": tensor-parallel only -> SP + selective recompute
    assert 5.0 <= tp_only / sel < 6.0


def _cluster(gpus, key="a100-80gb", mem=80 * 2**30, inter_gbps=200.0):
    return P.default_cluster(gpus, key, mem, inter_Bps=inter_gbps * 1e9 / 8)


def test_pipeline_bubble_is_p_minus_1_over_m():
    cfg = GPTConfig(24, 2048, 16, 2048, 51200)
    pc, f = param_counts(cfg), flops_per_token(cfg)
    p, dp = random.choice([2, 4, 8]), 2
    cl = _cluster(8 * p)
    m = 64
    c = P.evaluate(P.Layout(4, p, dp, 0, 1, "none"), cfg, pc, f, cl, peak_flop_per_s=312e12, mfu=0.5,
                   batch_tokens=m * dp * 2048)
    assert c.micro_batches == m
    busy = c.compute_s + c.recompute_s + c.tp_s
    assert c.bubble_s == pytest.approx((p - 1) / m * busy, rel=1e-12)
    assert c.to_dict()["bubble_fraction"] == pytest.approx((p - 1) / m)


def test_pure_data_parallel_matches_the_hierarchical_allreduce():
    cfg = GPTConfig(12, 768, 12, 1024, 50257)
    pc, f = param_counts(cfg), flops_per_token(cfg)
    cl = _cluster(16, "h100-sxm", inter_gbps=100)
    c = P.evaluate(P.Layout(1, 1, 16, 0, 1, "none"), cfg, pc, f, cl, peak_flop_per_s=989e12, mfu=0.4,
                   batch_tokens=2**20)
    nbytes = 2 * pc.total
    assert c.dp_s == pytest.approx(2 * 7 / 8 * nbytes / 450e9 + 2 * 1 / 2 * (nbytes / 8) / 12.5e9, rel=1e-12)
    assert c.compute_s == pytest.approx(f * 2**20 / (16 * 989e12 * 0.4), rel=1e-12)
    assert c.step_s == pytest.approx(c.compute_s + c.dp_s, rel=1e-12)
    z3 = P.evaluate(P.Layout(1, 1, 16, 3, 1, "none"), cfg, pc, f, cl, peak_flop_per_s=989e12, mfu=0.4,
                    batch_tokens=2**20)
    assert z3.dp_s == pytest.approx(1.5 * c.dp_s)  # ZeRO-3: all-gather twice + reduce-scatter


def test_recompute_costs_executed_flops():
    cfg = GPTConfig(8, 1024, 16, 2048, 32000)
    pc, f = param_counts(cfg), flops_per_token(cfg)
    cl = _cluster(8)
    kw = dict(peak_flop_per_s=989e12, mfu=0.5, batch_tokens=2**21)
    none, sel, full = (P.evaluate(P.Layout(1, 1, 8, 0, 1, r), cfg, pc, f, cl, **kw) for r in M.RECOMPUTE)
    assert none.recompute_s == 0
    # selective: the attention scores and their product with V again, 2 d (s+1) FLOP per token and layer (causal)
    assert sel.recompute_s / sel.compute_s == pytest.approx(8 * 2 * 1024 * 2049 / f, rel=1e-12)
    # full: the layers' forward pass again
    assert full.recompute_s / full.compute_s == pytest.approx((f / 3 - 2 * 1024 * 32000) / f, rel=1e-12)
    assert none.memory.activations_bytes > sel.memory.activations_bytes > full.memory.activations_bytes
    assert none.mfu_at_scale > sel.mfu_at_scale > full.mfu_at_scale


# the 530B model of Korthikanti Table 3 / Narayanan Table 1; the same flags (t 8, p 35, 105 layers, h 20480,
# 128 heads, s 2048, micro-batch 1, 35 nodes x 8 GPUs) are in Megatron-LM's SC21 run script for it, which ran
# with full activation checkpointing; GPT-2's vocabulary padded to 51200 as Megatron pads it
MT_NLG = GPTConfig(105, 20480, 128, 2048, 51200)


def test_megatron_530b_layout_fits_with_selective_recompute():
    """530B at t = 8, p = 35, micro-batch 1 on A100 80GB (Korthikanti et al. 2022, Table 3): reported as
    fitting, and its memory within 10% of the paper's own accounting."""
    pc, f = param_counts(MT_NLG), flops_per_token(MT_NLG)
    assert pc.total == pytest.approx(530e9, rel=0.01)
    cl = _cluster(280)
    res = P.search(MT_NLG, pc, f, cl, peak_flop_per_s=312e12, mfu=0.55, batch_tokens=280 * 2048,
                   fixed={"tp": 8, "pp": 35, "micro_batch": 1, "zero_stage": 0})
    best = res.best
    assert best.fits and best.layout.recompute == "selective"
    # the paper's accounting: 16 B per parameter of one GPU's share of the layers (Rajbhandari et al.),
    # activations 34 s b h L / t on the first stage (p micro-batches of L/p layers)
    s, b, h, L, t, p = 2048, 1, 20480, 105, 8, 35
    states = 16 * (12 * h * h * L / p + 51200 * h) / t
    acts = 34 * s * b * h * L / t
    assert best.memory.total_bytes == pytest.approx(states + acts, rel=0.10)
    assert best.memory.total_bytes < 80 * 2**30
    # without recompute the same layout does not fit in 80 GB: why the paper recomputes selectively
    kw = dict(peak_flop_per_s=312e12, mfu=0.55, batch_tokens=280 * 2048)
    none = P.evaluate(P.Layout(8, 35, 1, 0, 1, "none"), MT_NLG, pc, f, cl, **kw)
    assert not none.fits
    # the SC21 script's full checkpointing fits too, and costs a third more executed FLOPs than selective
    full = P.evaluate(P.Layout(8, 35, 1, 0, 1, "full"), MT_NLG, pc, f, cl, **kw)
    assert full.fits and full.memory.activations_bytes < best.memory.activations_bytes
    assert full.recompute_s > 10 * best.recompute_s and full.mfu_at_scale < best.mfu_at_scale


def test_search_refuses_what_fits_nowhere_with_the_reason():
    pc, f = param_counts(MT_NLG), flops_per_token(MT_NLG)
    with pytest.raises(P.NoLayoutError, match=r"fits no layout of 8 GPUs.*GPUs or a card with more memory"):
        P.search(MT_NLG, pc, f, _cluster(8), peak_flop_per_s=312e12, mfu=0.5, batch_tokens=2**22)


def test_parse_layout():
    assert P.parse_layout("tp=8, pp=4,zero=1,mb=2,recompute=selective") == {
        "tp": 8, "pp": 4, "zero_stage": 1, "micro_batch": 2, "recompute": "selective"}
    for bad in ("tp=0", "zero=4", "recompute=some", "xx=1", "tp"):
        with pytest.raises(ValueError):
            P.parse_layout(bad)


def _cli(capsys, *argv):
    from flopscale.profiler.cli import main

    rc = main(["plan", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_1024_h100_for_30_days_prints_a_layout_that_fits(capsys):
    rc, out, err = _cli(capsys, "--gpu", "h100-sxm", "--gpus", "1024", "--days", "30", "--no-neighbours", "--json")
    assert rc == 0, err
    d = json.loads(out)
    lay = d["layout"]
    assert set(lay) == {"tp", "pp", "dp", "zero_stage", "micro_batch", "recompute"}
    assert lay["tp"] * lay["pp"] * lay["dp"] == 1024 and lay["tp"] <= 8
    assert 0 < d["memory_per_gpu_bytes"] <= 0.9 * 80 * 2**30
    # pure data parallelism of this model would need 16 B per parameter on every GPU
    assert 16 * d["shape_params"]["total"] > 80 * 2**30
    top = d["layouts"]["top"][0]
    assert top["memory_per_gpu_bytes"] == d["memory_per_gpu_bytes"] and top["fits"]
    assert d["mfu_at_scale"] == pytest.approx(top["step"]["mfu_at_scale"]) and d["mfu_at_scale"] < 0.4


def test_cli_a_model_that_fits_no_layout_is_refused(capsys):
    rc, out, err = _cli(capsys, "--gpu", "a100-40gb", "--gpus", "2", "--params", "7e10", "--tokens", "1e12")
    assert rc == 2 and out == ""
    assert "cannot fit" in err and "GiB per GPU" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--gpus", "2", "--gpus-per-node", "1", "--layout", "tp=2"],
                                  ["--gpus", "8", "--layout", "tp=16"], ["--gpus", "16", "--layout", "pp=1000"],
                                  ["--gpus", "16", "--layout", "dp=3"], ["--gpus", "8", "--layout", "zero=9"]])
def test_cli_impossible_pinned_layouts_are_one_line(capsys, argv):
    rc, out, err = _cli(capsys, "--days", "1", "--no-neighbours", *argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "layout" in err

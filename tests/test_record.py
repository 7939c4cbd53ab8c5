"""profiler.Profile: launch records, costs against hand counts and FlopCounterMode,
labels, exports, roofline/MFU."""
from __future__ import annotations

import importlib.util
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from flopscale import profiler
from flopscale.kernels import Cost, register_cost
from flopscale.profiler.devices import Ceilings
from flopscale.profiler.record import Profile, label, pop_label, push_label, torch_op_cost
from flopscale.profiler.roofline import annotate, plot_roofline, utilisation

aten = torch.ops.aten


# ------------------------------------------------- a tiny costed custom op (test namespace)

@torch.library.custom_op("flopscale_test::scaled_mm", mutates_args=())
def scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    return (a @ b) * alpha


@scaled_mm.register_fake
def _(a, b, alpha):
    return a.new_empty(a.shape[0], b.shape[1])


def _scaled_mm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    return scaled_mm(grad, b.t().contiguous(), ctx.alpha), scaled_mm(a.t().contiguous(), grad, ctx.alpha), None


def _setup(ctx, inputs, output):
    a, b, alpha = inputs
    ctx.save_for_backward(a, b)
    ctx.alpha = alpha


scaled_mm.register_autograd(_scaled_mm_backward, setup_context=_setup)


@register_cost("flopscale_test::scaled_mm")
def _scaled_mm_cost(a, b, alpha):
    M, K = a.shape
    N = b.shape[1]
    es = a.element_size()
    return Cost(flops=2 * M * N * K, executed_flops=2 * M * N * K, bytes=es * (M * K + K * N + M * N),
                nonmatmul_flops=M * N, detail={"mm": 2 * M * N * K})


@register_flop_formula(torch.ops.flopscale_test.scaled_mm)
def _scaled_mm_formula(a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * a_shape[0] * b_shape[1] * a_shape[1]


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path / "cache"))


def ceil(fp32=1e9, bw=1e9):
    return Ceilings(flops={"fp32": fp32}, bandwidth=bw, device_name="test device", measured_at="2025-01-01")


# --------------------------------------------------------------------------- records

def test_custom_op_recorded_with_declared_cost_forward_and_backward():
    M, K, N = 13, 7, 11
    a = torch.randn(M, K, requires_grad=True)
    b = torch.randn(K, N, requires_grad=True)
    with Profile() as prof:
        out = scaled_mm(a, b, 0.5)
        out.sum().backward()
    ours = [r for r in prof.records if r.op == "flopscale_test::scaled_mm"]
    assert len(ours) == 3  # forward, dA, dB
    fwd = ours[0]
    assert fwd.flops == fwd.executed_flops == 2 * M * N * K
    assert fwd.nonmatmul_flops == M * N
    assert fwd.bytes == 4 * (M * K + K * N + M * N)
    assert fwd.shapes == [(M, K), (K, N)] and fwd.dtype == "fp32" and fwd.source == "declared"
    assert fwd.detail == {"mm": 2 * M * N * K}
    assert {r.flops for r in ours[1:]} == {2 * M * K * N}
    assert all(r.time_s is not None and r.time_s >= 0 for r in prof.records)
    torch.testing.assert_close(out, (a @ b) * 0.5)


def test_flop_counter_mode_agrees_with_recorded_model_flops():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(37, 53), torch.nn.ReLU(), torch.nn.Linear(53, 19))
    x = torch.randn(5, 11, 37)
    a = torch.randn(9, 6, requires_grad=True)
    b = torch.randn(6, 4, requires_grad=True)

    def step():
        y = model(x)
        z = torch.bmm(x, x.transpose(1, 2))
        c = scaled_mm(a, b, 2.0)
        (y.sum() + z.sum() + c.sum()).backward()

    with FlopCounterMode(display=False) as fc:
        step()
    with Profile() as prof:
        step()
    assert fc.get_total_flops() > 0
    assert sum(r.flops for r in prof.records) == fc.get_total_flops()
    # hand count: forward of each matmul-like op, times 1 + (number of gradients it needs):
    # linear 1 needs only dW (x has no grad), linear 2 needs dX and dW, the bmm of x none,
    # the custom op dA and dB
    lin1, lin2 = 2 * 55 * 37 * 53, 2 * 55 * 53 * 19
    bmm, custom = 2 * 5 * 11 * 11 * 37, 2 * 9 * 4 * 6
    assert sum(r.flops for r in prof.records) == 2 * lin1 + 3 * lin2 + bmm + 3 * custom


def causal_pairs(s_q, s_k):
    return int(torch.ones(s_q, s_k).tril().sum())


@pytest.mark.parametrize("s_q,s_k", [(17, 17), (9, 23), (23, 9)])
def test_sdpa_honours_is_causal(s_q, s_k):
    B, H, D, Dv = 2, 3, 8, 8  # (D != Dv takes torch's math path on the CPU: plain bmm records)
    q = torch.randn(B, H, s_q, D, requires_grad=True)
    k = torch.randn(B, H, s_k, D, requires_grad=True)
    v = torch.randn(B, H, s_k, Dv, requires_grad=True)
    with Profile() as prof:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.sum().backward()
    fwd, bwd = prof.records
    P = causal_pairs(s_q, s_k)  # top-left aligned, as torch defines is_causal
    assert fwd.flops == fwd.executed_flops == 2 * B * H * P * (D + Dv)
    assert bwd.flops == 2 * fwd.flops
    assert bwd.executed_flops == bwd.flops + 2 * B * H * P * D  # recomputed scores
    assert fwd.nonmatmul_flops == 5 * B * H * P


def test_sdpa_cuda_kernels_counted_on_meta_tensors_and_flop_counter_difference():
    """The CUDA flash kernel's cost, on meta tensors.  FlopCounterMode's formula ignores
    is_causal: for causal attention it counts S^2 pairs where there are S(S+1)/2."""
    from torch.utils.flop_counter import sdpa_flop_count

    B, H, S, D = 2, 4, 64, 32
    q = torch.empty(B, H, S, D, device="meta")
    op = aten._scaled_dot_product_flash_attention.default
    dense = torch_op_cost(op, (q, q, q, 0.0, False), {}, None)
    causal = torch_op_cost(op, (q, q, q, 0.0, True), {}, None)
    assert dense["flops"] == 4 * B * H * D * S * S == sdpa_flop_count(q.shape, q.shape, q.shape)
    assert causal["flops"] == 4 * B * H * D * S * (S + 1) // 2
    assert sdpa_flop_count(q.shape, q.shape, q.shape) / causal["flops"] == pytest.approx(2 * S / (S + 1))
    # an explicit mask is counted dense, and says so
    eff = aten._scaled_dot_product_efficient_attention.default
    masked = torch_op_cost(eff, (q, q, q, torch.empty(S, S, device="meta"), False, 0.0, True), {}, None)
    assert masked["flops"] == dense["flops"] and "mask" in masked["note"]


def test_matrix_vector_products_are_counted_though_flop_counter_mode_is_blind_to_them():
    m, n = 6, 9
    A, x, y = torch.randn(m, n), torch.randn(n), torch.randn(m)
    with Profile() as prof:
        torch.dot(x, x)
        torch.mv(A, x)
        torch.addmv(y, A, x)
    assert [(r.op, r.flops, r.nonmatmul_flops) for r in prof.records] == [
        ("aten::dot", 2 * n, 0), ("aten::mv", 2 * m * n, 0), ("aten::addmv", 2 * m * n, m)]
    with FlopCounterMode(display=False) as fc:
        torch.dot(x, x)
        torch.mv(A, x)
    assert fc.get_total_flops() == 0  # the documented difference


def test_bytes_read_once_written_once():
    M, K, N = 31, 17, 9
    a, b = torch.randn(M, K), torch.randn(K, N)
    c = torch.empty(M, N)
    x = torch.randn(M, N)
    bias = torch.randn(N)
    with Profile(all_ops=True) as prof:
        torch.mm(a, b, out=c)          # out= buffer written, not read
        y = x + bias.expand(M, N)      # broadcast operand read once
        x.add_(y)                      # in place: reads x and y, writes x
        xb = x.to(torch.bfloat16)      # a copy: no FLOPs, reads fp32, writes bf16
    mm, add, add_, cast = prof.records
    assert mm.op == "aten::mm" and mm.bytes == 4 * (M * K + K * N + M * N)
    assert add.bytes == 4 * (M * N + N + M * N) and add.nonmatmul_flops == M * N
    assert add_.bytes == 4 * (2 * M * N + M * N)
    assert cast.op == "aten::_to_copy" and cast.bytes == 4 * M * N + 2 * M * N and cast.nonmatmul_flops == 0
    assert xb.dtype == torch.bfloat16


def test_all_ops_estimates_and_skips_views():
    x = torch.randn(6, 10, requires_grad=True)
    w = torch.nn.LayerNorm(10)
    with Profile(all_ops=True) as prof:
        y = torch.softmax(w(x).t().reshape(10, 6), dim=-1)
        loss = y.sum()
        loss.backward()
    ops = [r.op for r in prof.records]
    assert not {"aten::t", "aten::view", "aten::transpose", "aten::detach", "aten::expand"} & set(ops)
    by = {r.op: r for r in prof.records}
    assert by["aten::_softmax"].nonmatmul_flops == 5 * 60
    assert by["aten::native_layer_norm"].nonmatmul_flops == 7 * 60
    assert by["aten::sum"].nonmatmul_flops == 60  # one per input element
    assert by["aten::_softmax_backward_data"].nonmatmul_flops == 4 * 60
    assert all(r.source == "estimate" and r.flops == 0 for r in prof.records)
    with Profile() as plain:
        torch.softmax(x, dim=-1).sum()
    assert plain.records == []  # without all_ops only costed ops are recorded


def test_labels_nest_per_thread_and_follow_backward_hooks():
    lin = torch.nn.Linear(8, 4)
    # hooks must return None (a returned value would replace the output / gradient)
    lin.register_forward_pre_hook(lambda m, a: push_label("lin") and None)
    lin.register_forward_hook(lambda m, a, o: pop_label("lin") and None)
    lin.register_full_backward_pre_hook(lambda m, g: push_label("lin.backward") and None)
    lin.register_full_backward_hook(lambda m, gi, go: pop_label("lin.backward") and None)
    x = torch.randn(3, 8, requires_grad=True)
    with Profile() as prof:
        with label("model"):
            with label("block0"):
                y = lin(x)
            z = x @ x.t()
        (y.sum() + z.sum()).backward()
    scopes = [(r.op, r.scope) for r in prof.records]
    assert scopes[0] == ("aten::addmm", "model/block0/lin")
    assert scopes[1] == ("aten::mm", "model")
    assert any(s.endswith("lin.backward") for _, s in scopes[2:])
    assert profiler.record.current_scope() == ""
    assert pop_label() is None  # popping an empty stack is harmless


def test_label_stack_is_thread_local():
    import threading

    seen = {}
    with label("main"):
        t = threading.Thread(target=lambda: seen.setdefault("scope", profiler.record.current_scope()))
        t.start()
        t.join()
        assert profiler.record.current_scope() == "main"
    assert seen["scope"] == ""


def test_times_wall_time_and_order():
    a = torch.randn(64, 64)
    with Profile() as prof:
        for _ in range(4):
            a = a @ a / 8
    assert [r.index for r in prof.records] == sorted(r.index for r in prof.records)
    starts = [r.start_s for r in prof.records]
    assert starts == sorted(starts)
    assert prof.wall_time_s >= sum(r.time_s for r in prof.records)
    assert prof.peak_memory_bytes is None and "CPU" in prof.note  # CPU: not tracked


# ------------------------------------------------------------------ tables and exports

def test_table_rates_roofline_and_mfu_from_given_ceilings():
    a, b = torch.randn(40, 30), torch.randn(30, 20)
    with Profile(ceilings=ceil(fp32=1e9, bw=1e9)) as prof:
        a @ b
    t = prof.table()
    for col in ("op", "scope", "flops", "executed_flops", "nonmatmul_flops", "bytes", "time_s", "flop_per_s",
                "bytes_per_s", "ceiling_share", "arithmetic_intensity", "bound", "peak_share", "executed_peak_share",
                "peak_source"):
        assert col in t.columns
    r = t.iloc[0]
    F_, B_ = 2 * 40 * 30 * 20, 4 * (40 * 30 + 30 * 20 + 40 * 20)
    assert r["flops"] == F_ and r["bytes"] == B_
    assert r["peak_share"] == pytest.approx(F_ / r["time_s"] / 1e9)
    assert r["arithmetic_intensity"] == pytest.approx(F_ / B_)
    assert r["ceiling_share"] == pytest.approx(max(F_ / 1e9, B_ / 1e9) / r["time_s"])
    assert r["bound"] == "compute"  # AI 4.3 FLOP/B above the ridge of 1 FLOP/B
    mem = prof.table(ceilings=ceil(fp32=1e12, bw=1e9)).iloc[0]
    assert mem["bound"] == "memory" and "measured ceiling (test device" in mem["peak_source"]


def test_summary_and_utilisation_totals():
    a = torch.randn(32, 32)
    with Profile(ceilings=ceil()) as prof:
        for _ in range(3):
            a @ a
        torch.bmm(a[None], a[None])
    s = prof.summary()
    assert dict(zip(s["op"], s["count"])) == {"aten::mm": 3, "aten::bmm": 1}
    assert s["time_share"].sum() == pytest.approx(1.0)
    u = utilisation(prof, ceilings=ceil(), over="records")
    T = sum(r.time_s for r in prof.records)
    assert u.flops == 4 * 2 * 32**3
    assert u.mfu == pytest.approx(u.flops / 1e9 / T)
    assert "measured" in u.peak_source
    uw = utilisation(prof, ceilings=ceil())  # default: wall time (conventional MFU)
    assert uw.over == "wall" and uw.mfu <= u.mfu and uw.time_s == prof.wall_time_s
    assert uw.mfu_op_time == pytest.approx(u.mfu)
    # a dtype without a peak is left out of MFU and reported
    with Profile(ceilings=ceil()) as p64:
        torch.randn(8, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    u64 = utilisation(p64, ceilings=ceil(), over="records")
    assert math.isnan(u64.mfu) and u64.unpeaked_flops == 2 * 8**3 and "fp64" in u64.note


def test_datasheet_peak_on_cpu_is_absent_not_invented():
    with Profile(peak="datasheet") as prof:
        torch.randn(8, 8) @ torch.randn(8, 8)
    if not torch.cuda.is_available():
        t = prof.table()
        assert math.isnan(t.iloc[0]["peak_share"]) and "datasheet" in t.iloc[0]["peak_source"]


def test_exports_csv_json_trace_and_plot(tmp_path):
    a = torch.randn(16, 16)
    with Profile(ceilings=ceil()) as prof:
        with label("x"):
            a @ a
            torch.addmm(a, a, a)
    csv = pd.read_csv(prof.to_csv(tmp_path / "p.csv"))
    assert list(csv["op"]) == ["aten::mm", "aten::addmm"] and list(csv["scope"]) == ["x", "x"]
    doc = json.loads(prof.to_json(tmp_path / "p.json"))
    assert json.loads((tmp_path / "p.json").read_text()) == doc
    assert len(doc["records"]) == 2 and doc["totals"]["flops"] == 2 * 2 * 16**3
    assert doc["totals"]["peak_memory_bytes"] is None  # NaN/None become null
    prof.to_chrome_trace(tmp_path / "t.json")
    trace = json.loads((tmp_path / "t.json").read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in xs] == ["aten::mm", "aten::addmm"]
    assert all(e["dur"] > 0 and e["ts"] >= 0 for e in xs) and xs[0]["args"]["flops"] == 2 * 16**3
    png = plot_roofline(prof, ceilings=ceil(), path=tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_annotate_handles_zero_time_and_zero_bytes():
    df = pd.DataFrame([{"op": "x", "peak_dtype": "fp32", "flops": 10, "executed_flops": 10,
                        "nonmatmul_flops": 0, "bytes": 0, "time_s": 0.0}])
    r = annotate(df, ceil()).iloc[0]
    assert math.isnan(r["mfu"]) and math.isnan(r["arithmetic_intensity"]) and r["bound"] == "compute"


# ------------------------------------------------------------- with the real kernels

def _have(mod):
    return importlib.util.find_spec(f"flopscale.kernels.{mod}") is not None


@pytest.mark.skipif(not (_have("matmul_layer") and _have("attention_layer")),
                    reason="kernels.matmul / kernels.attention not in the tree yet")
def test_profile_records_kernels_matmul_and_causal_attention(device):
    from flopscale import kernels

    M, N, K = 37, 23, 29
    a = torch.randn(M, K, device=device)
    b = torch.randn(K, N, device=device)
    B, H, S, D = 1, 2, 19, 16
    q = torch.randn(B, H, S, D, device=device)
    with Profile() as prof:
        kernels.matmul(a, b)
        kernels.attention(q, q, q, causal=True)
    assert [r.op for r in prof.records] == ["flopscale::matmul", "flopscale::attention_fwd"]
    mm, att = prof.records
    assert mm.flops == 2 * M * N * K
    assert att.flops == 4 * B * H * D * S * (S + 1) // 2
    assert att.executed_flops >= att.flops  # computed-then-masked diagonal tiles
    with FlopCounterMode(display=False) as fc:
        kernels.matmul(a, b)
        kernels.attention(q, q, q, causal=True)
    assert fc.get_total_flops() == mm.flops + att.flops


@pytest.mark.skipif(not (_have("blocksparse_layer") and _have("blocksparse_attention_layer")),
                    reason="block-sparse kernels not in the tree yet")
def test_profile_records_blocksparse_kernels_and_flop_counter_agrees(device):
    from flopscale import kernels

    blk, R, K = 16, 3, 20
    layout = kernels.BlockLayout.random(1, R, R, 0.5, seed=1, block=blk)
    a = torch.randn(1, 1, R * blk, K, device=device)
    b = torch.randn(1, 1, K, R * blk, device=device)
    q = torch.randn(1, 2, R * blk, 16, device=device)
    with Profile() as prof:
        kernels.blocksparse_matmul(a, b, layout, "sdd")
        kernels.blocksparse_attention(q, q, q, layout)
    mm, att = prof.records
    assert mm.op == "flopscale::blocksparse_matmul" and mm.flops == 2 * layout.nnz * blk * blk * K
    assert att.flops == 4 * 2 * 16 * layout.nnz * blk * blk  # B*H*D*pairs, one layout for both heads
    with FlopCounterMode(display=False) as fc:
        kernels.blocksparse_matmul(a, b, layout, "sdd")
        kernels.blocksparse_attention(q, q, q, layout)
    assert fc.get_total_flops() == mm.flops + att.flops


@pytest.mark.gpu
def test_cuda_events_resolved_at_exit_and_peak_memory():
    a = torch.randn(1024, 1024, device="cuda")
    with Profile() as prof:
        for _ in range(3):
            a = a @ a / 32
    assert len(prof.records) == 3 and all(r.time_s > 0 for r in prof.records)
    assert prof.peak_memory_bytes >= 3 * 1024 * 1024 * 4
    assert prof.records[0].peak_dtype in ("fp32", "tf32")


@pytest.mark.gpu
def test_backward_launches_are_timed_on_the_stream_they_run_on():
    # forward on a side stream: autograd runs the backward mm there too, on its device thread
    w = torch.randn(4096, 4096, device="cuda", requires_grad=True)
    x = torch.randn(8192, 4096, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with Profile() as prof:
        with torch.cuda.stream(side):
            loss = (x @ w).square().sum()
        loss.backward()
    mms = [r for r in prof.records if r.op == "aten::mm"]
    assert len(mms) == 2 and len({r.thread for r in mms}) == 2  # forward here, backward on autograd's thread
    # 2*8192*4096*4096 FLOP each: >= 0.2 ms even on TF32 tensor cores; an event pair on an idle
    # stream would read a few microseconds
    assert all(2e-4 < r.time_s < 1.0 and r.start_s >= 0 for r in mms)

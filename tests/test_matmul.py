"""kernels.matmul against float64 torch: ragged sizes, batches, strides, gradients, both kernels,
FLOP counting, costs, bad input, configuration cache.  GPU-marked: bf16/fp8 numerics, TMA use."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flopscale import kernels
from flopscale.kernels import matmul_kernels as mk
from flopscale.kernels import matmul_layer as ml
from flopscale.kernels import matmul_tuning as mt
from flopscale.kernels._runtime import interpreter_dot_ok, interpreter_on

HAS_CUDA = torch.cuda.is_available()
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert not torch.isnan(out).any(), "NaN in output (unwritten element?)"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every output starts as NaN, so an element the kernel fails to write fails the test."""

    def nan_output(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(ml, "_new_output", nan_output)


def tolerance(dtype):
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return 1e-3
    return TOL[dtype]


def rand(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=torch.float32, device=device).to(dtype)


# ---------------------------------------------------------------- numerics (pointer kernel)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 33, 129), (129, 7, 33), (33, 129, 7), (64, 32, 96)])
def test_matmul_matches_float64(M, N, K, dtype, device):
    a, b = rand(M, K, dtype=dtype, device=device), rand(K, N, dtype=dtype, device=device)
    out = kernels.matmul(a, b)
    assert out.shape == (M, N) and out.dtype == dtype
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((2, 3, 33, 17), (17, 9)),  # 2-D b: batch folded into M
        ((2, 3, 33, 17), (3, 17, 9)),  # b broadcast over the first batch dim
        ((33, 17), (2, 17, 9)),  # a broadcast
        ((2, 1, 7, 17), (1, 3, 17, 9)),  # both broadcast
    ],
)
def test_batched_and_broadcast(a_shape, b_shape, device):
    a, b = rand(*a_shape, device=device), rand(*b_shape, device=device)
    out = kernels.matmul(a, b)
    ref = torch.matmul(a.double(), b.double())
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4


def test_transposed_and_strided_inputs_are_read_in_place(device):
    x = rand(2, 40, 33, device=device)  # a = x^T per batch: column-major [2, 33, 40]
    a = x.mT
    y = rand(80, 21, device=device)
    b = y[::2]  # row stride 2*21
    out = kernels.matmul(a, b)
    assert rel_err(out, a.double() @ b.double()) < 1e-4
    # both operands transposed, 2-D
    a2, b2 = rand(9, 31, device=device).mT, rand(13, 9, device=device).mT
    assert rel_err(kernels.matmul(a2, b2), a2.double() @ b2.double()) < 1e-4


def test_out_dtype(device):
    a, b = rand(7, 33, dtype=torch.float16, device=device), rand(33, 5, dtype=torch.float16, device=device)
    out = kernels.matmul(a, b, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    # fp32 output keeps what fp16 rounding would lose
    assert rel_err(out, a.double() @ b.double()) < 1e-5


def test_fp8_inputs_give_bf16_by_default_on_cpu_interpreter(device):
    if device == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    fp8 = torch.float8_e4m3fn
    a, b = rand(33, 64, device=device).to(fp8), rand(64, 24, device=device).to(fp8)
    out = kernels.matmul(a, b)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, a.double() @ b.double()) < 1e-2


# ---------------------------------------------------------------- scaled matmul (fp8 scales)
def _scaled_ref(a, b, sa, sb):
    return (a.double() * sa.double().reshape(-1, 1)) @ (b.double() * sb.double().reshape(1, -1))


@pytest.mark.parametrize("kernel", ["pointer", "tma"])
@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
def test_scaled_matmul_matches_float64(kernel, rowwise, dtype, device):
    """Per-tensor and row-wise scales as torch._scaled_mm takes them, B K-major (w.mT)."""
    if dtype != torch.float16 and device == "cpu" and not interpreter_dot_ok(dtype):
        pytest.skip("this Triton's interpreter cannot compute fp8 dots (GPU test below)")
    if device == "cuda" and dtype != torch.float16 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    M, N, K = 45, 40, 96
    a = rand(M, K, device=device).to(dtype)
    b = rand(N, K, device=device).to(dtype).mT  # K-major B
    sa = (torch.rand(M, 1, device=device) + 0.5) if rowwise else torch.tensor(0.7, device=device)
    sb = (torch.rand(1, N, device=device) + 0.5) if rowwise else torch.tensor(1.9, device=device)
    scales = ml._Scales(sa.reshape(-1).contiguous(), sb.reshape(-1).contiguous())
    out = ml._run(a, b, None, path=kernel, scales=scales)
    assert out.dtype == (torch.bfloat16 if dtype == torch.float8_e4m3fn else dtype)
    assert rel_err(out, _scaled_ref(a, b, sa, sb)) < 1e-2
    if kernel == "pointer":  # the public op too
        assert rel_err(kernels.matmul_layer.scaled_matmul(a, b, sa, sb), _scaled_ref(a, b, sa, sb)) < 1e-2


def test_scaled_op_schema_and_fake_tensor_registration():
    a, b = rand(7, 32, dtype=torch.float16), rand(32, 9, dtype=torch.float16)
    torch.library.opcheck(torch.ops.flopscale.scaled_matmul.default, (a, b, torch.ones(7, 1), torch.ones(1), None),
                          test_utils=("test_schema", "test_faketensor"))


def test_scaled_matmul_with_split_k(device):
    from dataclasses import replace

    a, b = rand(20, 300, dtype=torch.float16, device=device), rand(300, 24, dtype=torch.float16, device=device)
    sa, sb = torch.rand(20, device=device) + 0.5, torch.rand(24, device=device) + 0.5
    out = ml._run(a, b, None, config=replace(mk.INTERPRETER_CONFIG, SPLIT_K=3), scales=ml._Scales(sa, sb))
    assert rel_err(out, _scaled_ref(a, b, sa, sb)) < 1e-2


@pytest.mark.parametrize("sa,sb,exc,match", [
    (torch.ones(3, 1, dtype=torch.float16), torch.ones(1), TypeError, "float32"),
    (torch.ones(4, 1), torch.ones(1), ValueError, r"shape \(8, 1\)"),
    (torch.ones(8, 1), torch.ones(5, 1), ValueError, r"shape \(1, 6\)"),
])
def test_scaled_matmul_bad_scales_are_clear_errors(sa, sb, exc, match):
    a, b = torch.ones(8, 16, dtype=torch.float16), torch.ones(16, 6, dtype=torch.float16)
    with pytest.raises(exc, match=match):
        kernels.matmul_layer.scaled_matmul(a, b, sa, sb)


def test_scaled_matmul_is_counted_by_its_formula():
    a, b = rand(8, 16, dtype=torch.float16), rand(16, 6, dtype=torch.float16)
    with FlopCounterMode(display=False) as fc:
        kernels.matmul_layer.scaled_matmul(a, b, torch.ones(1), torch.ones(1))
    assert fc.get_total_flops() == 2 * 8 * 6 * 16
    cost = kernels.cost_of("flopscale::scaled_matmul", a, b, torch.ones(1), torch.ones(1, 6))
    assert cost.flops == 2 * 8 * 6 * 16 and cost.bytes == (8 * 16 + 16 * 6 + 8 * 6) * 2 + 7 * 4


@pytest.mark.gpu
def test_scaled_fp8_matches_torch_scaled_mm_and_keeps_precision_over_long_k():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("needs sm_90")
    fp8 = torch.float8_e4m3fn
    M, N, K = 256, 384, 16384
    a = rand(M, K, device="cuda").to(fp8)
    b = rand(N, K, device="cuda").to(fp8).mT
    sa, sb = torch.rand(M, 1, device="cuda") + 0.5, torch.rand(1, N, device="cuda") + 0.5
    ref = _scaled_ref(a.float(), b.float(), sa, sb)
    out = kernels.matmul_layer.scaled_matmul(a, b, sa, sb)
    theirs = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    assert rel_err(out, ref) < 1e-2 and rel_err(out, ref) <= rel_err(theirs, ref) * 1.5


# ---------------------------------------------------------------- the TMA kernel (under the interpreter too)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True), (True, True)])
def test_tma_kernel_all_operand_orders(dtype, a_t, b_t, device):
    M, N, K = 104, 40, 56  # ragged against 32-wide tiles, but 16-byte aligned rows for fp16 and fp32
    a = rand(K, M, dtype=dtype, device=device).mT if a_t else rand(M, K, dtype=dtype, device=device)
    b = rand(N, K, dtype=dtype, device=device).mT if b_t else rand(K, N, dtype=dtype, device=device)
    assert ml._tma_major(a) == (a_t, M if a_t else K)
    out = ml._run(a, b, None, path="tma")  # 3 persistent programs loop over 8 tiles on the CPU
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


@pytest.mark.parametrize("opts", [{"EPILOGUE_SUBTILE": True}, {"WARP_SPECIALIZE": True, "FLATTEN": True},
                                  {"EPILOGUE_SUBTILE": True, "SPLIT_K": 2}])
def test_tma_kernel_scheduling_options_keep_numerics(opts, device):
    """Half-tile epilogue stores, warp-specialized and flattened loops: same product (the
    interpreter runs the options' code paths; whether they take effect on sm_90 is what
    ``flopscale inspect`` reports)."""
    from dataclasses import replace

    a, b = rand(70, 200, dtype=torch.float16, device=device), rand(200, 72, dtype=torch.float16, device=device)
    out = ml._run(a, b, None, path="tma", config=replace(mk.INTERPRETER_CONFIG, **opts))
    assert rel_err(out, a.double() @ b.double()) < 1e-2


def test_pointer_kernel_never_gets_tma_only_options():
    for cfgs in mk.HOPPER_CONFIGS.values():
        for c in cfgs:
            assert c.tma_only == (c.EPILOGUE_SUBTILE or c.WARP_SPECIALIZE or c.FLATTEN)
    assert any(c.tma_only for c in mk.HOPPER_CONFIGS["16"])
    pointer_specs = [s for s in mk.inspect_specs(90) if s.kernel.startswith("matmul[")]
    assert not any(("_sub" in s.config or "_ws" in s.config) for s in pointer_specs)


def test_tma_kernel_folds_batches_of_a(device):
    a, b = rand(3, 5, 33, 24, device=device), rand(24, 8, device=device)
    out = ml._run(a, b, None, path="tma")
    assert rel_err(out, a.double() @ b.double()) < 1e-4


def _tma_device(monkeypatch):
    """Treat the device as TMA-capable (sm_90) so "auto" chooses as on a Hopper GPU."""
    monkeypatch.setattr(ml, "_tma_supported", lambda dev: True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "case,want",
    [
        ("K unaligned", "tma+padded-a"),  # a [33, 7]: rows of 7 elements
        ("N unaligned", "tma+c-by-pointer+padded-b"),  # b [8, 7] and c [16, 7]
        ("lm head", "tma+c-by-pointer"),  # h @ W^T, W [vocab=51, 24]: only the logits are unaligned
        ("lm head dh", "tma+padded-a"),  # g [37, 51] @ W
        ("lm head dW", "tma+padded-a"),  # g^T (column-major, leading stride 51) @ h
    ],
)
def test_unaligned_leading_dimensions_stay_on_the_tma_kernel(case, want, dtype, device, monkeypatch):
    """Rows that start off a 16-byte boundary (a vocabulary of 50257) used to send the whole
    product to the pointer kernel; now the operand is copied to aligned storage or the output
    stored by pointer, and the path says which."""
    _tma_device(monkeypatch)
    r = lambda *s: rand(*s, dtype=dtype, device=device)  # noqa: E731
    V, d, T = 51, 24, 37
    a, b = {
        "K unaligned": lambda: (r(33, 7), r(7, 16)),
        "N unaligned": lambda: (r(16, 8), r(8, 7)),
        "lm head": lambda: (r(T, d), r(V, d).mT),
        "lm head dh": lambda: (r(T, V), r(V, d)),
        "lm head dW": lambda: (r(T, V).mT, r(T, d)),
    }[case]()
    before = ml.PATH_COUNTS[want]
    out = kernels.matmul(a, b)
    assert ml.last_path().name == want and ml.PATH_COUNTS[want] == before + 1
    assert ml.matmul_path(a, b).name == want  # the same decision without launching
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)
    assert out.is_contiguous()


def test_batched_b_takes_the_pointer_kernel(device, monkeypatch):
    a, b = rand(2, 16, 8, device=device), rand(2, 8, 8, device=device)
    with pytest.raises(ValueError, match="TMA kernel takes 2-D"):
        ml._run(a, b, None, path="tma")
    _tma_device(monkeypatch)
    out = kernels.matmul(a, b)
    assert ml.last_path().kernel == "pointer" and rel_err(out, a.double() @ b.double()) < 1e-4


def test_aligned_copy_keeps_values_order_and_aligns_the_leading_stride():
    x = rand(5, 7, dtype=torch.float16)
    for t, t_major in ((x, False), (x.mT, True)):
        y = ml._aligned_copy(t)
        assert torch.equal(y, t) and ml._tma_major(y) is not None and ml._tma_major(y)[0] is t_major


# ---------------------------------------------------------------- split-K and the size-aware choice
@pytest.mark.parametrize("kernel", ["pointer", "tma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [2, 3, 4])
def test_split_k_matches_float64(kernel, dtype, split, device):
    """K = 291 is 10 tiles of 32 (ragged): 3 slices take 4, 4, 2 tiles, 4 slices 3, 3, 3, 1."""
    from dataclasses import replace

    M, N, K = 45, 38, 291
    a = rand(K, M, dtype=dtype, device=device).mT if kernel == "tma" else rand(M, K, dtype=dtype, device=device)
    b = rand(K, 40, dtype=dtype, device=device)[:, :N]  # non-contiguous rows (stride 40)
    cfg = replace(mk.INTERPRETER_CONFIG, SPLIT_K=split)
    out = ml._run(a, b, None, path=kernel, config=cfg)
    assert ml.last_path().split_k == split and ml.last_path().kernel == kernel
    assert rel_err(out, a.double() @ b.double()) < tolerance(dtype)


def test_split_k_over_a_batch_on_the_pointer_kernel(device):
    from dataclasses import replace

    a, b = rand(3, 20, 150, device=device), rand(3, 150, 9, device=device)
    out = ml._run(a, b, None, config=replace(mk.INTERPRETER_CONFIG, SPLIT_K=2))
    assert rel_err(out, a.double() @ b.double()) < 1e-4


def test_a_weight_gradient_shape_is_split_by_default(device):
    """Small M*N, long K (a weight gradient over many tokens): with tuning off the size-aware
    model picks split-K, not the first candidate; here 3 'SMs' (the interpreter's count) and
    one 32x32 tile."""
    a = rand(600, 20, device=device).mT  # [20, 600]: activations^T
    b = rand(600, 30, device=device)  # [600, 30]: output gradients
    out = kernels.matmul(a, b)
    path = ml.last_path()
    assert path.split_k > 1 and ml.matmul_path(a, b).split_k == path.split_k
    assert rel_err(out, a.double() @ b.double()) < 1e-4


def test_wide_tuning_space_is_pruned_by_the_shared_memory_model():
    sm90 = 232448
    space = mk.tuning_space("16", sm90, 2, 2)
    assert 50 <= len(space) <= 100 and len({c.name for c in space}) == len(space)
    for c in space:
        assert mk.smem_bytes(c, 2, 2, True) <= sm90 - 1024
        assert not (c.WARP_SPECIALIZE and c.num_warps == 8)  # Triton drops it there
    # what the model cut: 128x256x128 never fits at 3 stages; the subtiled 128x256x64 fits 4
    names = {c.name for c in space}
    assert "BM128_BN256_BK128_G8_w8_s3" not in names and "BM128_BN256_BK64_G8_w8_s4_sub" in names
    assert "BM128_BN256_BK64_G8_w8_s4" not in names  # 4 stages without subtiling: 262 kB
    # a smaller card keeps fewer
    assert len(mk.tuning_space("16", 101376, 2, 2)) < len(space)


def test_size_aware_pick_on_an_h100_sized_gpu():
    """The model with 132 SMs and the shipped sm_90 16-bit tiles: the GPT-2-small weight
    gradient (768x768 over 65,536 tokens) gets split-K on a 128x128 tile (18 tiles of 128x256
    would leave 114 SMs idle); a large square product keeps the 128x256 tile unsplit."""
    configs = mk.HOPPER_CONFIGS["16"]
    small = mk.with_splits(configs, 768, 768, 65536, 132)
    got = mk.pick(small, 768, 768, 65536, 132)
    assert got.SPLIT_K > 1 and got.BLOCK_M * got.BLOCK_N <= 128 * 128
    tiles = -(-768 // got.BLOCK_M) * -(-768 // got.BLOCK_N)
    assert tiles * got.SPLIT_K >= 100  # most of the 132 SMs get work
    big = mk.with_splits(configs, 8192, 8192, 8192, 132)
    assert big == configs and mk.pick(big, 8192, 8192, 8192, 132) == configs[0]
    # a model time, not a measurement: fewer waves of the same tile are never predicted slower
    t = [mk.predicted_time(configs[1], 1024, 1024, 4096, n) for n in (16, 32, 64)]  # 64 tiles: 4, 2, 1 waves
    assert t[0] > t[1] > t[2]


def test_batches_beyond_the_grid_limit_launch_in_slices(device, monkeypatch):
    """The batch is grid axis 1 of the pointer kernel (at most 65535 on CUDA): larger batches
    run in slices; a limit of 2 splits this batch of 5 into 3 launches."""
    monkeypatch.setattr(ml, "MAX_GRID_YZ", 2)
    a, b = rand(5, 33, 20, device=device), rand(5, 20, 17, device=device)
    assert rel_err(kernels.matmul(a, b), a.double() @ b.double()) < 1e-4


def test_pipeline_stages_fit_shared_memory():
    """Shared-memory estimate against what Triton allocated on sm_90 (``flopscale inspect``,
    Triton 3.6 and 3.9): the 128x256x64 TMA tile stages its output for the store, so an fp32
    output (278.5 kB at 3 stages) exceeds the 227 kB an sm_90 block may use and must drop to 2
    stages; 16-bit outputs keep the shipped stages."""
    big = mk.MatmulConfig(128, 256, 64, 8, num_warps=8, num_stages=3)
    assert mk.smem_bytes(big, 2, 2, tma=False) == 147456  # Triton: 147456
    assert 0 <= 213016 - mk.smem_bytes(big, 2, 2, tma=True) <= 64  # Triton: 213016 (+ barriers)
    assert 0 <= 278552 - mk.smem_bytes(big, 2, 4, tma=True) <= 64  # Triton: 278552
    sm90 = 232448
    assert mk.fit_smem(big, 2, 2, True, sm90) is big
    fitted = mk.fit_smem(big, 2, 4, True, sm90)
    assert fitted.num_stages == 2 and mk.smem_bytes(fitted, 2, 4, True) < sm90
    assert mk.fit_smem(big, 2, 4, True, 100_000) is None
    # half-tile epilogue: Triton allocated 229408 bytes for 128x256x64 at 4 stages (sm_90, 3.9)
    sub = mk.MatmulConfig(128, 256, 64, 8, num_warps=8, num_stages=4, EPILOGUE_SUBTILE=True)
    assert 0 <= 229408 - mk.smem_bytes(sub, 2, 2, tma=True) <= 64
    assert mk.fit_smem(sub, 2, 2, True, sm90) is sub and mk.fit_smem(sub, 2, 4, True, sm90).num_stages == 3
    for table in (mk.HOPPER_CONFIGS,):
        for family, cfgs in table.items():
            es = {"16": 2, "32": 4, "8": 1}[family]
            for c in cfgs:  # every shipped Hopper config launches with a 16-bit or fp32 output
                assert mk.fit_smem(c, es, 4, True, sm90) is not None


def test_tf32_follows_torch_setting():
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert ml._input_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert ml._input_precision(torch.float32) == "tf32"
        assert ml._input_precision(torch.float16) == "tf32"  # ignored by Triton for 16-bit operands
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------- autograd
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((7, 33), (33, 129)), ((2, 3, 17, 9), (9, 5)), ((2, 3, 17, 9), (3, 9, 5)), ((17, 9), (2, 9, 5))],
)
def test_gradients_match_float64(a_shape, b_shape, device):
    a = rand(*a_shape, device=device).requires_grad_()
    b = rand(*b_shape, device=device).requires_grad_()
    out = kernels.matmul(a, b)
    g = torch.randn_like(out)
    da, db = torch.autograd.grad(out, (a, b), g)
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    ra, rb = torch.autograd.grad(torch.matmul(a64, b64), (a64, b64), g.double())
    assert da.shape == a.shape and db.shape == b.shape
    assert rel_err(da, ra) < 1e-4 and rel_err(db, rb) < 1e-4


def test_gradient_of_transposed_fp16_input(device):
    x = rand(33, 7, dtype=torch.float16, device=device).requires_grad_()
    b = rand(33, 16, dtype=torch.float16, device=device).requires_grad_()
    out = kernels.matmul(x.mT, b)
    g = torch.randn_like(out)
    dx, db = torch.autograd.grad(out, (x, b), g)
    assert rel_err(dx, (g.double() @ b.double().mT).mT) < 1e-2
    assert rel_err(db, x.double() @ g.double()) < 1e-2


def test_op_schema_autograd_and_fake_tensor_registration():
    a = rand(7, 33).requires_grad_()
    b = rand(33, 9)
    torch.library.opcheck(
        torch.ops.flopscale.matmul.default,
        (a, b, None),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.skipif(HAS_CUDA, reason="checks the interpreter")
def test_torch_compile_under_the_interpreter_fails_loudly_not_silently():
    a, b = rand(8, 16), rand(16, 8)
    f = torch.compile(lambda x, y: kernels.matmul(x, y), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="needs a CUDA GPU"):
        f(a, b)


# ---------------------------------------------------------------- FLOPs and cost
def test_flop_counter_counts_our_op_by_our_formula(device):
    M, N, K = 17, 9, 33
    a = rand(2, M, K, device=device).requires_grad_()
    b = rand(K, N, device=device).requires_grad_()
    with FlopCounterMode(display=False) as fc:
        out = kernels.matmul(a, b)
        forward = fc.get_total_flops()
        out.sum().backward()
    counts = fc.get_flop_counts()["Global"]
    assert list(map(str, counts)) == ["flopscale.matmul"]  # nothing else (no aten.mm fallback)
    assert forward == 2 * 2 * M * N * K
    assert fc.get_total_flops() == 3 * forward  # dA and dB are one matmul each
    cost = kernels.cost_of("flopscale::matmul", a, b)
    assert cost.flops == cost.executed_flops == forward
    assert cost.bytes == (2 * M * K + K * N + 2 * M * N) * 4


def test_cost_names_the_path_that_runs(device, monkeypatch):
    _tma_device(monkeypatch)
    a, W = rand(37, 24, device=device), rand(51, 24, device=device)
    cost = kernels.cost_of("flopscale::matmul", a, W.mT)
    assert cost.detail == {"path:tma+c-by-pointer": 2 * 37 * 51 * 24}
    kernels.matmul(a, W.mT)
    assert ml.last_path().name == "tma+c-by-pointer"


def test_cost_counts_output_dtype_and_broadcast_operand_once():
    a = torch.empty(4, 8, 16, dtype=torch.float16, device="meta")
    b = torch.empty(16, 32, dtype=torch.float16, device="meta")
    cost = kernels.cost_of("flopscale::matmul", a, b, torch.float32)
    assert cost.flops == 2 * 4 * 8 * 32 * 16
    assert cost.bytes == 4 * 8 * 16 * 2 + 16 * 32 * 2 + 4 * 8 * 32 * 4


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "a,b,kw,exc,match",
    [
        (torch.ones(3, 4), torch.ones(5, 2), {}, ValueError, "inner dimensions"),
        (torch.ones(4), torch.ones(4, 2), {}, ValueError, "must be"),
        (torch.ones(2, 3, 4), torch.ones(3, 4, 2), {}, ValueError, "broadcast"),
        (torch.ones(3, 4), torch.ones(4, 2, dtype=torch.float16), {}, TypeError, "same dtype"),
        (torch.ones(3, 4, dtype=torch.int32), torch.ones(4, 2, dtype=torch.int32), {}, TypeError, "unsupported dtype"),
        (torch.ones(3, 4), torch.ones(4, 2), {"out_dtype": torch.int8}, TypeError, "out_dtype"),
        ([[1.0]], torch.ones(1, 1), {}, TypeError, "tensors"),
        (torch.ones(3, 4), torch.ones(4, 2, device="meta"), {}, ValueError, "different devices"),
    ],
)
def test_bad_input_is_a_clear_error(a, b, kw, exc, match):
    with pytest.raises(exc, match=match):
        kernels.matmul(a, b, **kw)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU path without the interpreter")
@pytest.mark.parametrize("value", ["0", "false", "False", "off", "no", ""])
def test_cpu_tensor_without_interpreter_is_a_value_error(value, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    with pytest.raises(ValueError, match="interpreter"):
        kernels.matmul(torch.ones(2, 2), torch.ones(2, 2))


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("TRUE", True), ("on", True), ("yes", True),
                                      ("0", False), ("false", False), ("off", False), ("", False), ("2", False)])
def test_interpreter_switch_is_read_as_triton_reads_it(value, on, monkeypatch):
    from triton._C.libtriton import getenv_bool

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_on() is on
    assert getenv_bool("TRITON_INTERPRET", False) is on  # Triton's own parser agrees


@pytest.mark.skipif(HAS_CUDA, reason="checks the interpreter")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_interpreter_never_returns_a_wrong_tensor_for_bf16_or_fp8(dtype):
    """The interpreter multiplies bf16 bit patterns (errors ~1e10): such a dtype is refused with
    one clear line; a dtype it computes correctly (fp8 in triton 3.9) must then be right."""
    a, b = rand(24, 40).to(dtype), rand(40, 16).to(dtype)
    try:
        out = kernels.matmul(a, b)
    except ValueError as exc:
        assert str(dtype) in str(exc) and "interpreter" in str(exc) and "\n" not in str(exc)
        assert not interpreter_dot_ok(dtype)
        # the op called directly (as autograd does) refuses too
        with pytest.raises(ValueError, match="interpreter"):
            torch.ops.flopscale.matmul(a, b, None)
    else:
        assert interpreter_dot_ok(dtype)
        assert rel_err(out, a.double() @ b.double()) < 1e-2


@pytest.mark.skipif(HAS_CUDA, reason="checks the interpreter")
def test_a_dtype_the_interpreter_gets_wrong_is_refused(monkeypatch):
    from flopscale.kernels import _runtime

    monkeypatch.setitem(_runtime._DOT_OK, torch.float8_e4m3fn, False)
    a = rand(8, 16).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="float8_e4m3fn needs a CUDA GPU"):
        kernels.matmul(a, a.mT.contiguous())
    assert interpreter_dot_ok(torch.float16) and interpreter_dot_ok(torch.float32)


# ---------------------------------------------------------------- configuration cache
def test_config_cache_round_trips_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path / "cache"))
    cache = mt.ConfigCache("test-configs.json")
    assert cache.get("k") is None
    cache.put("k", "BM128_BN256_BK64_G8_w8_s3")
    path = tmp_path / "cache" / "test-configs.json"
    assert json.loads(path.read_text()) == {"k": "BM128_BN256_BK64_G8_w8_s3"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["test-configs.json", "test-configs.json.lock"]  # no temporary left
    fresh = mt.ConfigCache("test-configs.json")  # a new process reads it back
    assert fresh.get("k") == "BM128_BN256_BK64_G8_w8_s3"
    path.write_text("{not json")
    assert mt.ConfigCache("test-configs.json").get("k") is None  # corrupt file is ignored


def _put_many(cache_dir: str, worker: int, n: int) -> None:
    os.environ["FLOPSCALE_CACHE_DIR"] = cache_dir
    cache = mt.ConfigCache("race.json")
    for i in range(n):
        cache.put(f"w{worker}-k{i}", f"cfg{i}")


def test_config_cache_keeps_every_entry_written_by_concurrent_processes(tmp_path):
    """Four processes write 40 keys each into one file at the same time: every key survives
    (without the lock each read-merge-write raced and most keys were lost)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    saved = json.loads((tmp_path / "race.json").read_text())
    assert saved == {f"w{w}-k{i}": f"cfg{i}" for w in range(4) for i in range(40)}


def test_config_cache_file_follows_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    old = os.umask(0o022)
    try:
        mt.ConfigCache("mode.json").put("k", "v")
    finally:
        os.umask(old)
    assert (tmp_path / "mode.json").stat().st_mode & 0o777 == 0o644


def test_tuning_picks_the_fastest_config_once_and_remembers_it(tmp_path, monkeypatch):
    """The tuner's logic without a GPU: timings come from a stub of triton's do_bench."""
    import triton.testing

    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(mt, "_CONFIG_CACHE", mt.ConfigCache("matmul-configs.json"))
    monkeypatch.setattr(mt, "_device_tag", lambda dev: "Stub GPU|sm90|tritonX")
    monkeypatch.setattr(mt, "_tuning_allowed", lambda *t: True)
    cfgs = mk.HOPPER_CONFIGS["16"][:3]
    speed = {cfgs[0].name: 3.0, cfgs[1].name: 1.0, cfgs[2].name: 2.0}  # ms
    ran = []

    def fake_bench(fn, **kw):
        fn()
        return speed[ran[-1]]

    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    run = lambda cfg: ran.append(cfg.name)  # noqa: E731
    cuda = torch.device("cuda")
    got = mt.choose_config("matmul-tma", cfgs, "k1", cuda, run, ())
    assert got == cfgs[1] and sorted(ran) == sorted(speed)
    saved = json.loads((tmp_path / "matmul-configs.json").read_text())
    assert saved == {"Stub GPU|sm90|tritonX|matmul-tma|k1": cfgs[1].name}
    # a new process (fresh cache object) reuses the choice without benchmarking
    monkeypatch.setattr(mt, "_CONFIG_CACHE", mt.ConfigCache("matmul-configs.json"))
    ran.clear()
    assert mt.choose_config("matmul-tma", cfgs, "k1", cuda, run, ()) == cfgs[1] and ran == []
    # tuning off: the heuristic picks, nothing is benchmarked or written
    monkeypatch.setattr(mt, "_tuning_allowed", lambda *t: False)
    assert mt.choose_config("matmul-tma", cfgs, "k2", cuda, run, (), heuristic=lambda c: c[2]) == cfgs[2]
    assert ran == [] and len(json.loads((tmp_path / "matmul-configs.json").read_text())) == 1


def test_tuning_is_off_when_asked_and_for_cpu_tensors(monkeypatch):
    monkeypatch.setenv("FLOPSCALE_AUTOTUNE", "0")
    assert mt._tuning_allowed(torch.ones(1)) is False
    monkeypatch.setenv("FLOPSCALE_AUTOTUNE", "1")
    assert mt._tuning_allowed(torch.ones(1)) is False  # not a CUDA tensor


def test_shape_buckets():
    assert [mt._bucket(x) for x in (1, 16, 17, 1000, 1024, 1025)] == [16, 16, 32, 1024, 1024, 2048]


def test_shipped_configs_are_well_formed():
    for table in (mk.HOPPER_CONFIGS, mk.AMPERE_CONFIGS):
        for family, cfgs in table.items():
            names = [c.name for c in cfgs]
            assert len(set(names)) == len(names) and 1 <= len(cfgs) <= 6
            for c in cfgs:
                assert c.BLOCK_M >= 64 and c.BLOCK_N >= 64 and c.BLOCK_K >= 32


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (127, 255, 129), (1024, 1024, 1024), (4096, 11008, 4096)])
def test_bf16_on_gpu(M, N, K):
    a, b = rand(M, K, dtype=torch.bfloat16, device="cuda"), rand(K, N, dtype=torch.bfloat16, device="cuda")
    assert rel_err(kernels.matmul(a, b), a.double() @ b.double()) < 1e-2


@pytest.mark.gpu
def test_fp8_on_gpu():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    fp8 = torch.float8_e4m3fn
    a = rand(512, 256, device="cuda").to(fp8)
    b = rand(320, 256, device="cuda").to(fp8).mT  # K-major B, as fp8 MMA wants
    for out_dtype in (None, torch.float16, torch.float32):
        out = kernels.matmul(a, b, out_dtype=out_dtype)
        assert out.dtype == (out_dtype or torch.bfloat16)
        assert rel_err(out, a.double() @ b.double()) < 1e-2


@pytest.mark.gpu
def test_fp8_needs_sm89():
    if torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this GPU has fp8")
    a = torch.ones(16, 16, device="cuda").to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="8.9"):
        kernels.matmul(a, a)


@pytest.mark.gpu
def test_hopper_takes_the_tma_kernel_and_remembers_the_config(tmp_path, monkeypatch):
    if torch.cuda.get_device_capability()[0] < 9 or not mk.HAS_TMA:
        pytest.skip("needs sm_90+ and a Triton with tensor descriptors")
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(mt, "_CONFIG_CACHE", mt.ConfigCache("matmul-configs.json"))
    launched = []
    real = ml._launch_tma
    monkeypatch.setattr(ml, "_launch_tma", lambda *args: launched.append(args[3].name) or real(*args))
    a, b = rand(1000, 512, dtype=torch.bfloat16, device="cuda"), rand(512, 768, dtype=torch.bfloat16, device="cuda")
    out = ml._run(a, b, None)
    assert launched and rel_err(out, a.double() @ b.double()) < 1e-2
    saved = json.loads((tmp_path / "matmul-configs.json").read_text())
    assert list(saved.values()) == [launched[-1]]


@pytest.mark.gpu
def test_torch_compile_on_gpu():
    a = rand(3, 100, 64, dtype=torch.float16, device="cuda").requires_grad_()
    b = rand(64, 72, dtype=torch.float16, device="cuda").requires_grad_()
    f = torch.compile(lambda x, y: kernels.matmul(x, y).float().sum(), fullgraph=True)
    f(a, b).backward()
    g = torch.ones(3, 100, 72, dtype=torch.float64, device="cuda")
    assert rel_err(a.grad, g @ b.double().mT) < 1e-2
    assert rel_err(b.grad, (a.double().mT @ g).sum(0)) < 1e-2


@pytest.mark.gpu
def test_tf32_used_only_when_allowed():
    a, b = rand(512, 512, device="cuda"), rand(512, 512, device="cuda")
    ref = a.double() @ b.double()
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert rel_err(kernels.matmul(a, b), ref) < 1e-5  # true fp32
        torch.backends.cuda.matmul.allow_tf32 = True
        err = rel_err(kernels.matmul(a, b), ref)
        assert 1e-5 < err < 1e-3  # tf32 rounding is visible
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old

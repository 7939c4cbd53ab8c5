"""Offline compilation of the shipped kernel configurations for sm_90 (no GPU needed):
every one compiles, does not spill, fits in shared memory and uses wgmma.

Compiling is ~1 s per configuration on a small CPU (~95 s for all 84 on 2 busy cores, a few
seconds when Triton's on-disk cache is warm), so the default run compiles a representative
subset (11 configurations: largest and smallest tiles, every mode, smallest and largest
block, every dtype family) and the exhaustive check is marked ``slow``.  Results are cached for the session by
kernels.inspect (under the interpreter the compilation runs in one child process per call).
"""
from __future__ import annotations

import importlib
import json
import os

import pytest

from flopscale.kernels import inspect as kinspect
from flopscale.profiler.cli import main

SM90 = 90

# "kernel config" substrings compiled in the default run (15 configurations)
REPRESENTATIVE = (
    "matmul[bf16] BM128_BN256",  # pointer kernel (batched b, torch.compile traces, pre-Hopper), largest tile
    "matmul_tma[bf16] BM128_BN256_BK64_G8_w8_s3",  # the biggest shared-memory user (128x256x64, 3 stages)
    "matmul_tma[bf16] BM64_BN128_BK64_G8_w4_s4_sk4",  # smallest tile, split-K
    "matmul_tma[fp32] BM128_BN128_BK32_G8_w8_s3_sk4",  # tf32, split-K (fp32 partial sums by TMA)
    "matmul_tma_cptr[bf16] BM128_BN256_BK64_G8_w8_s3",  # output rows not 16-byte aligned (vocab 50257): pointer stores
    "matmul[bf16] BM128_BN128_BK64_G8_w4_s4_sk4",  # pointer split-K (torch.compile path)
    "matmul_tma[bf16] BM128_BN128_BK64_G8_w4_s4_ws",  # warp specialization, must take effect
    "matmul_tma[bf16] BM128_BN256_BK64_G8_w8_s4_sub",  # half-tile epilogue, 4 stages
    "matmul_tma[fp8] BM128_BN128_BK128_G8_w8_s4_sk4",  # fp8: row-wise scales, promoted accumulation, split-K
    "blocksparse_sdd[bf16,b16]",  # grouped, transposed small-block path
    "blocksparse_dsd[bf16,b16]",  # SWAP path
    "blocksparse_dds^T[bf16,b16]",
    "blocksparse_sdd[bf16,b128]",
    "blocksparse_dsd^T[bf16,b128]",
    "blocksparse_dds[fp32,b128]",
)


@pytest.fixture(scope="module")
def all_specs():
    return kinspect.collect_specs(SM90)


@pytest.fixture(scope="module")
def representative():
    return {(r.kernel, r.config): r for r in kinspect.inspect("sm90", kernel_filter=REPRESENTATIVE)}


def assert_healthy(r: kinspect.InspectResult) -> None:
    where = f"{r.kernel} {r.config}"
    assert r.compiled, f"{where}: {r.error}"
    assert r.spills == 0, f"{where}: spills {r.spills} bytes/thread"
    assert r.registers is not None and 0 < r.registers <= 247, where  # none within 8 of the 255 limit
    assert r.shared_bytes is not None and r.shared_bytes <= kinspect.SMEM_LIMIT[SM90], where
    assert r.fits_smem is True
    assert r.stack_bytes == 0, where
    if r.expects_tensor_core:  # every matmul-family spec does; other modules may ship non-wgmma kernels
        assert r.tensor_core and r.wgmma > 0 and r.mma_sync == 0, f"{where}: no wgmma or mma.sync"


def test_modules_are_one_tuple_and_each_has_the_hook():
    assert isinstance(kinspect.INSPECT_MODULES, tuple)
    assert {"flopscale.kernels.matmul_kernels", "flopscale.kernels.blocksparse_kernels"} <= set(kinspect.INSPECT_MODULES)
    assert len(set(kinspect.INSPECT_MODULES)) == len(kinspect.INSPECT_MODULES)
    for name in kinspect.INSPECT_MODULES:
        mod = importlib.import_module(name)
        specs = mod.inspect_specs(SM90)
        assert specs and all(isinstance(s, kinspect.KernelSpec) for s in specs)
        for s in specs:  # every constexpr has a value and the signature names every argument
            assert list(s.signature) == list(s.fn.arg_names)
            assert {k for k, v in s.signature.items() if v == "constexpr"} == set(s.constexprs)


def test_specs_cover_every_shipped_config(all_specs):
    from flopscale.kernels import blocksparse_kernels as bk
    from flopscale.kernels import matmul_kernels as mk

    from dataclasses import replace

    for dt, fam in (("bf16", "16"), ("fp16", "16"), ("fp32", "32"), ("fp8", "8")):
        shipped = mk.HOPPER_CONFIGS[fam]
        with_split = [c for b in shipped
                      for c in ([b, replace(b, SPLIT_K=mk.INSPECT_SPLIT_K)] if mk.split_candidates(b) else [b])]
        assert [s.config for s in all_specs if s.kernel == f"matmul_tma[{dt}]"] == [c.name for c in with_split]
        # the pointer kernel has no TMA-only scheduling options (epilogue subtiling, warp specialization)
        assert [s.config for s in all_specs if s.kernel == f"matmul[{dt}]"] == [
            c.name for c in with_split if not c.tma_only]
        # the pointer-store epilogue of the TMA kernel (unaligned output rows) for every tile
        assert [s.config for s in all_specs if s.kernel == f"matmul_tma_cptr[{dt}]"] == [c.name for c in shipped]
    for dt, fam in (("bf16", "16"), ("fp16", "16"), ("fp32", "32")):
        for block in (16, 32, 64, 128):
            for variant in ("sdd", "dsd", "dsd^T", "dds", "dds^T"):
                (s,) = [s for s in all_specs if s.kernel == f"blocksparse_{variant}[{dt},b{block}]"]
                assert s.config == bk.config_for(variant[:3], block, fam).name


def test_representative_hopper_configs_compile_without_spills_and_use_wgmma(representative, all_specs):
    want = {(s.kernel, s.config) for s in all_specs if any(k in f"{s.kernel} {s.config}" for k in REPRESENTATIVE)}
    assert set(representative) == want and len(want) == len(REPRESENTATIVE)
    for r in representative.values():
        assert r.expects_tensor_core
        assert_healthy(r)


def test_warp_specialization_takes_effect_where_shipped(representative):
    """A config that asks for warp specialization must get it in the code (setmaxnreg), and
    none that does not ask gets it; the half-tile epilogue stores twice per tile."""
    for (kernel, config), r in representative.items():
        assert r.warp_specialized is ("_ws" in config), (kernel, config)
        if kernel.startswith("matmul_tma[") and "_sub" in config:
            assert r.tma_stores == 2, r.tma_stores


def test_tma_kernel_really_uses_tma(representative):
    for (kernel, _), r in representative.items():
        tma = kernel.startswith("matmul_tma")
        assert (r.tma_loads > 0) is tma and (r.tma_stores > 0) is kernel.startswith("matmul_tma["), kernel
        assert r.extra["tma"] is tma, kernel


def _slow_selected(config) -> bool:
    expr = config.getoption("-m") or ""
    return os.environ.get("FLOPSCALE_RUN_SLOW") == "1" or ("slow" in expr and "not slow" not in expr)


@pytest.mark.slow
def test_every_shipped_hopper_config_compiles_without_spills_and_uses_wgmma(all_specs, request):
    # ~90 s on 2 cores without a warm cache: runs with `-m slow` or FLOPSCALE_RUN_SLOW=1
    if not _slow_selected(request.config):
        pytest.skip("exhaustive compile of all shipped configs: select with -m slow or FLOPSCALE_RUN_SLOW=1")
    results = kinspect.inspect("sm90")
    assert [(r.kernel, r.config) for r in results] == [(s.kernel, s.config) for s in all_specs]
    assert len(results) > 50
    problems = []
    for r in results:  # every unhealthy configuration listed, not only the first
        try:
            assert_healthy(r)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    assert not problems, "\n".join(problems)


TOY_MODULE = """
import triton
import triton.language as tl


@triton.jit
def toy_dot(a_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, a).to(tl.bfloat16))


@triton.jit
def toy_ws(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr, WS: tl.constexpr):
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[BLOCK, K], strides=[K, 1], block_shape=[BLOCK, 64])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, BLOCK], strides=[BLOCK, 1], block_shape=[64, BLOCK])
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in tl.range(0, K, 64, warp_specialize=WS):
        acc = tl.dot(a_desc.load([0, k]), b_desc.load([k, 0]), acc)
    offs = tl.arange(0, BLOCK)
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], acc.to(tl.bfloat16))


def inspect_specs(capability=90):
    from flopscale.kernels.inspect import KernelSpec

    sig = {"a_ptr": "*bf16", "c_ptr": "*bf16", "BLOCK": "constexpr"}
    specs = [
        KernelSpec("toy_dot", f"BLOCK={b}", toy_dot, sig, {"BLOCK": b}, num_warps=4, num_stages=1,
                   aligned=("a_ptr", "c_ptr"))
        for b in (64, 8)  # tl.dot needs tiles of at least 16: BLOCK=8 must fail to compile
    ]
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "K": "i32", "BLOCK": "constexpr", "WS": "constexpr"}
    # asked for warp specialization twice: it takes effect at 4 warps, Triton drops it at 8
    specs += [
        KernelSpec("toy_ws", f"w{w}", toy_ws, sig, {"BLOCK": 128, "WS": True}, num_warps=w, num_stages=3,
                   aligned=("a_ptr", "b_ptr", "c_ptr", "K"))
        for w in (4, 8)
    ]
    return specs
"""


def test_a_module_added_through_the_hook_is_compiled_and_errors_are_reported(tmp_path, monkeypatch):
    (tmp_path / "toy_kernels_for_inspect.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    good, bad, ws4, ws8 = kinspect.inspect("sm90", modules=("toy_kernels_for_inspect",),
                                           progress=lambda d, t: seen.append((d, t)))
    assert good.compiled and good.wgmma and good.spills == 0 and good.config == "BLOCK=64"
    assert good.mma_sync == 0 and good.tma_loads == good.tma_stores == 0 and good.warp_specialized is False
    assert not bad.compiled and bad.error and bad.registers is None and bad.wgmma is None
    # counts come from SASS: a 64x64x64 bf16 dot is one warpgroup issuing 4 m64n64k16 wgmma
    assert good.extra["counted_in"] == "sass" and good.wgmma == 4 and good.stack_bytes == 0
    # the flag is not the fact: only the 4-warp build really split into partitions
    assert ws4.compiled and ws8.compiled and ws4.tma_loads > 0 and ws8.tma_loads > 0
    assert ws4.warp_specialized is True and ws8.warp_specialized is False
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_count_ops_reads_sass_and_ptx_and_skips_comments():
    sass = """
        /*0100*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;
        /*0110*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0120*/                   UTMALDG.2D [UR8], [UR14] ;
        /*0130*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0140*/                   UTMASTG.2D [UR4], [UR6] ;
        /*0150*/                   USETMAXREG.DEALLOC.CTAPOOL 0x28 ;
    """
    assert kinspect.count_ops(sass, kinspect._SASS_OPS) == {
        "wgmma": 2, "mma_sync": 1, "tma_loads": 1, "tma_stores": 1, "setmaxnreg": 1}
    ptx = """
        wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, p, 1, 1, 1, 1;
        // wgmma.mma_async in a comment does not count
        cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd3, {%r2, %r3}], [%r4];
        cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%rd5, {%r6, %r7}], [%r8];
        mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f2};
    """
    assert kinspect.count_ops(ptx, kinspect._PTX_OPS) == {
        "wgmma": 1, "mma_sync": 1, "tma_loads": 1, "tma_stores": 1, "setmaxnreg": 0}


def test_inspect_does_not_import_the_matmul_modules():
    """kernels.inspect is the base the kernel modules' hooks build on: it must not import them
    back (it used to reach into matmul_layer for the cache directory)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(kinspect.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("matmul" in (m or "") or "attention" in (m or "") for m in imported), imported


@pytest.mark.parametrize("text,cap", [("sm90", 90), ("sm_90", 90), ("90", 90), (80, 80), ("SM89", 89)])
def test_parse_target(text, cap):
    assert kinspect.parse_target(text) == cap


@pytest.mark.parametrize("text", ["sm70", "hopper", "", "sm_100a"])
def test_unknown_target_is_a_value_error(text):
    with pytest.raises(ValueError, match="unknown target"):
        kinspect.parse_target(text)


# ---------------------------------------------------------------- CLI
CONTRACT_KEYS = {"kernel", "config", "compiled", "registers", "spills", "shared_bytes", "tensor_core", "wgmma",
                 "tma_loads", "tma_stores", "mma_sync", "warp_specialized", "stack_bytes"}


def test_cli_json_rows_have_the_contract_keys(capsys):
    rc = main(["inspect", "--target", "sm90", "--kernel", "blocksparse_sdd[bf16,b16]", "--json"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert rc == 0 and len(rows) == 1 and err == ""  # no progress with --json (nor off a terminal)
    row = rows[0]
    assert CONTRACT_KEYS <= set(row)
    assert row["kernel"] == "blocksparse_sdd[bf16,b16]" and row["compiled"] is True
    assert row["spills"] == 0 and row["stack_bytes"] == 0 and isinstance(row["shared_bytes"], int)
    for k in ("wgmma", "mma_sync", "tma_loads", "tma_stores", "registers"):
        assert isinstance(row[k], int) and not isinstance(row[k], bool), k
    assert row["wgmma"] > 0 and row["mma_sync"] == 0 and isinstance(row["warp_specialized"], bool)


def test_progress_line_goes_to_a_terminal_only(monkeypatch, capsys):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr("sys.stderr", fake)
    assert main(["inspect", "--kernel", "blocksparse_dsd[bf16,b16]"]) == 0
    assert "1/1 configurations compiled" in fake.getvalue()
    fake2 = Tty()
    monkeypatch.setattr("sys.stderr", fake2)
    assert main(["inspect", "--kernel", "blocksparse_dsd[bf16,b16]", "--json"]) == 0
    assert fake2.getvalue() == ""


def test_cli_table_names_units(capsys):
    rc = main(["inspect", "--kernel", "blocksparse_dsd[bf16,b16]"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "smem[B]" in out and "spills[B]" in out and "sm_90: 1/1 configurations compiled" in out
    assert "blocksparse_dsd[bf16,b16]" in out


def test_cli_table_flags_register_pressure_and_mixed_mma(monkeypatch, capsys):
    def fake(cap, kernel_filter=None, progress=None):
        mk = lambda name, regs, wg, ms: kinspect.InspectResult(  # noqa: E731
            kernel=name, config="c", compiled=True, registers=regs, stack_bytes=0, spills=0, shared_bytes=1024,
            smem_limit=232448, tensor_core=True, wgmma=wg, mma_sync=ms, tma_loads=0, tma_stores=0,
            warp_specialized=False)
        return [mk("ok", 200, 4, 0), mk("hot", 250, 4, 0), mk("mixed", 100, 20, 32)]

    monkeypatch.setattr(kinspect, "inspect", fake)
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "1 configuration(s) within 8 registers of the 255-register limit" in out
    assert "1 configuration(s) mix wgmma with mma.sync" in out


@pytest.mark.parametrize("argv,match", [(["--target", "sm70"], "unknown target"), (["--kernel", "nope"], "no shipped kernel configuration")])
def test_cli_bad_input_is_one_line_exit_2(argv, match, capsys):
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1

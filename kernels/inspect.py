"""Offline compile reports: build every shipped kernel configuration for a target GPU,
without a GPU, and read registers, spills, shared memory and tensor-core use.

How it works: each module named in :data:`INSPECT_MODULES` exposes a hook

    def inspect_specs(capability: int = 90) -> list[KernelSpec]

returning one :class:`KernelSpec` per (kernel, shipped configuration) it would launch on a
GPU of that compute capability (e.g. 90 for sm_90), specialised as a typical launch is.
:func:`inspect` compiles each spec with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", capability, 32))`` and reads

* ``registers``, ``spills`` -- from ``cuobjdump -res-usage`` on the cubin (REG; spills are
  STACK + LOCAL bytes per thread, > 0 means the kernel spills),
* ``shared_bytes`` -- Triton's shared-memory allocation (bytes per program), compared with the
  target's opt-in limit per block (``SMEM_LIMIT``),
* ``tensor_core`` -- PTX has ``mma.sync`` or ``wgmma.mma_async``,
* ``wgmma`` -- PTX has ``wgmma.mma_async`` or SASS (``cuobjdump -sass``) has ``HGMMA``/``QGMMA``
  (Hopper warpgroup MMA for 16-bit/tf32 and fp8 operands).

To add a kernel module, append its import path to :data:`INSPECT_MODULES` and give it an
``inspect_specs(capability)`` function (import ``KernelSpec`` from here inside the hook).
Results are cached per process; Triton also caches compiled kernels on disk, so a second run
is fast.  Under the Triton interpreter (``TRITON_INTERPRET=1``, as in the CPU test suite)
``@triton.jit`` yields interpreted functions that cannot be compiled, so :func:`inspect` then
compiles in child processes without the interpreter; with several CPUs it also compiles in
parallel child processes (``FLOPSCALE_INSPECT_JOBS`` sets how many; 1 compiles in-process).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ._runtime import interpreter_on

__all__ = [
    "INSPECT_MODULES",
    "TARGETS",
    "SMEM_LIMIT",
    "KernelSpec",
    "InspectResult",
    "collect_specs",
    "compile_spec",
    "inspect",
    "parse_target",
]

#: Kernel modules scanned by ``flopscale inspect``; each defines ``inspect_specs(capability)``.
INSPECT_MODULES: tuple[str, ...] = (
    "flopscale.kernels.matmul_kernels",
    "flopscale.kernels.blocksparse_kernels",
    "flopscale.kernels.attention_kernels",
    "flopscale.kernels.blocksparse_attention_kernels",
)

#: Target names accepted by ``--target`` -> compute capability.
TARGETS: dict[str, int] = {"sm80": 80, "sm86": 86, "sm89": 89, "sm90": 90}

#: Maximum dynamic shared memory per block (opt-in), bytes, by compute capability.
SMEM_LIMIT: dict[int, int] = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


@dataclass(frozen=True)
class KernelSpec:
    """One compilation to inspect.

    ``signature`` maps every argument name of ``fn`` to a Triton type string (``"*bf16"``,
    ``"i32"``, ``"constexpr"``); ``constexprs`` gives the value of every ``constexpr``
    argument; ``aligned`` names the pointer/int arguments a launch would see as divisible by
    16 (Triton specialises on that).  ``tensor_core`` says whether the kernel is meant to run
    on tensor cores (then, on sm_90, it is expected to use wgmma).
    """

    kernel: str
    config: str
    fn: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    tensor_core: bool = True
    aligned: tuple[str, ...] = ()

    def key(self) -> tuple:
        return (
            self.kernel,
            self.config,
            getattr(self.fn, "__name__", str(self.fn)),
            tuple(sorted(self.signature.items())),
            tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())),
            self.num_warps,
            self.num_stages,
            self.aligned,
        )


@dataclass
class InspectResult:
    kernel: str
    config: str
    compiled: bool
    error: str | None = None
    registers: int | None = None
    spills: int | None = None
    shared_bytes: int | None = None
    smem_limit: int | None = None
    tensor_core: bool | None = None
    wgmma: bool | None = None
    expects_tensor_core: bool = True
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def fits_smem(self) -> bool | None:
        if self.shared_bytes is None or self.smem_limit is None:
            return None
        return self.shared_bytes <= self.smem_limit

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits_smem"] = self.fits_smem
        return d


def parse_target(target: str | int) -> int:
    """'sm90' / 'sm_90' / '90' / 90 -> 90; ValueError for unknown targets."""
    if isinstance(target, int):
        cap = target
    else:
        t = str(target).strip().lower().replace("_", "")
        t = t[2:] if t.startswith("sm") else t
        if not t.isdigit():
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        cap = int(t)
    if cap not in TARGETS.values():
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return cap


def collect_specs(capability: int = 90, modules: Iterable[str] | None = None) -> list[KernelSpec]:
    """All specs of the scanned modules for this capability, in module order."""
    specs: list[KernelSpec] = []
    for name in INSPECT_MODULES if modules is None else modules:
        mod = importlib.import_module(name)
        hook = getattr(mod, "inspect_specs", None)
        if hook is None:
            raise AttributeError(f"{name} has no inspect_specs(capability) hook")
        specs.extend(hook(capability))
    return specs


def _tool(name: str) -> str | None:
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001
        pass
    return shutil.which(name)


_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cubin_facts(cubin: bytes) -> dict:
    """REG/STACK/LOCAL from ``cuobjdump -res-usage`` and whether SASS has warpgroup MMA."""
    tool = _tool("cuobjdump")
    if tool is None:
        return {}
    facts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        out = subprocess.run([tool, "-res-usage", "-sass", path], capture_output=True, text=True, timeout=120).stdout
        m = _RES_RE.search(out)
        if m:
            facts["registers"] = int(m.group(1))
            facts["spills"] = int(m.group(2)) + int(m.group(4))
        facts["sass_gmma"] = bool(re.search(r"\b[HQI]GMMA\b", out))
        facts["sass_mma"] = bool(re.search(r"\b(HMMA|QMMA|IMMA)\b", out))
        facts["sass_tma"] = "UTMALDG" in out or "UTMASTG" in out
    return facts


_CACHE: dict[tuple, InspectResult] = {}


def compile_spec(spec: KernelSpec, capability: int = 90) -> InspectResult:
    """Compile one spec for ``sm_<capability>`` and report (cached per process)."""
    key = (spec.key(), capability)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if interpreter_on():
        raise RuntimeError(
            "compile_spec: kernels are interpreted (TRITON_INTERPRET=1) and cannot be compiled; "
            "use kernels.inspect.inspect(), which compiles in a child process"
        )
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton

    t0 = time.perf_counter()
    result = InspectResult(
        kernel=spec.kernel, config=spec.config, compiled=False,
        smem_limit=SMEM_LIMIT.get(capability), expects_tensor_core=spec.tensor_core,
    )
    try:
        arg_names = list(spec.fn.arg_names)
        attrs = {(arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
        src = ASTSource(fn=spec.fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=attrs)
        with warnings.catch_warnings():
            # Triton 3.9 warns once that its FP-fusion default will change; not ours to report
            warnings.simplefilter("ignore", UserWarning)
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
            )
        if not hasattr(compiled, "module"):
            # never loaded on a device: keeps CompiledKernel.__del__ (triton 3.9) from
            # complaining at garbage collection
            compiled.module = None
        ptx = compiled.asm.get("ptx", "")
        cubin = compiled.asm.get("cubin", b"")
        meta = compiled.metadata
        result.compiled = True
        result.shared_bytes = int(getattr(meta, "shared", 0) or 0)
        ptx_wgmma = "wgmma.mma_async" in ptx
        ptx_mma = ptx_wgmma or "mma.sync" in ptx
        facts = _cubin_facts(cubin) if cubin else {}
        result.registers = facts.get("registers")
        result.spills = facts.get("spills")
        result.tensor_core = ptx_mma or facts.get("sass_mma", False) or facts.get("sass_gmma", False)
        result.wgmma = ptx_wgmma or facts.get("sass_gmma", False)
        result.extra = {
            "ptx_wgmma": ptx_wgmma,
            "sass_gmma": facts.get("sass_gmma"),
            "tma": "cp.async.bulk.tensor" in ptx or bool(facts.get("sass_tma")),
            "num_warps": spec.num_warps,
            "num_stages": spec.num_stages,
        }
    except Exception as exc:  # noqa: BLE001 - a failed compile is a result, not a crash
        msg = str(exc).strip().splitlines()
        result.error = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
    result.seconds = time.perf_counter() - t0
    _CACHE[key] = result
    return result


def _label(spec_or_result: Any) -> str:
    return f"{spec_or_result.kernel} {spec_or_result.config}"


def _matches(label: str, kernel_filter: str | Sequence[str] | None) -> bool:
    if not kernel_filter:
        return True
    if isinstance(kernel_filter, str):
        return kernel_filter in label
    return any(f in label for f in kernel_filter)


# results compiled by child processes, by (capability, modules, "kernel config")
_CHILD_RESULTS: dict[tuple, InspectResult] = {}


def _jobs(n_specs: int) -> int:
    """Child processes to compile ``n_specs`` specs with: ``$FLOPSCALE_INSPECT_JOBS``, else one
    per CPU (at most 8), at least 4 specs each.  A Triton compile runs on one core, and the
    full sm_90 set (about 120 compilations) takes 1-2 minutes on one."""
    env = os.environ.get("FLOPSCALE_INSPECT_JOBS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8, n_specs // 4))


def _inspect_in_subprocess(cap: int, mods: tuple[str, ...], labels: list[str], jobs: int = 1) -> list[InspectResult]:
    """Compile in child processes without the interpreter, ``jobs`` of them side by side (once
    per spec).  Under the Triton interpreter ``@triton.jit`` gives interpreted functions, which
    cannot be compiled; on a GPU machine the children compile in parallel."""
    missing = [lb for lb in labels if (cap, mods, lb) not in _CHILD_RESULTS]
    if missing:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if interpreter_on() and "TRITON_CACHE_DIR" not in env:
            # a cache of our own, so repeated runs (the test suite) reuse compiled kernels
            from .matmul_layer import cache_dir

            env["TRITON_CACHE_DIR"] = str(cache_dir() / "triton-inspect")
        jobs = max(1, min(jobs, len(missing)))
        chunks = [missing[i::jobs] for i in range(jobs)]  # interleaved: similar kernels spread out

        def run(chunk: list[str]) -> tuple[int, str, str]:
            request = json.dumps({"target": cap, "modules": list(mods), "labels": chunk})
            proc = subprocess.run(
                [sys.executable, "-c", "import sys; from flopscale.kernels.inspect import _child; _child(sys.stdin.read())"],
                input=request, capture_output=True, text=True, env=env,
            )
            return proc.returncode, proc.stdout, proc.stderr

        if jobs == 1:
            outputs = [run(chunks[0])]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(jobs) as pool:
                outputs = list(pool.map(run, chunks))
        fields = {f.name for f in dataclasses.fields(InspectResult)}
        for code, out, err in outputs:
            if code != 0:
                tail = (err.strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"kernel inspection subprocess failed: {tail}")
            for d in json.loads(out):
                r = InspectResult(**{k: v for k, v in d.items() if k in fields})
                _CHILD_RESULTS[(cap, mods, _label(r))] = r
    return [_CHILD_RESULTS[(cap, mods, lb)] for lb in labels]


def _child(request: str) -> None:
    req = json.loads(request)
    cap, labels = int(req["target"]), set(req["labels"])
    results = [compile_spec(s, cap) for s in collect_specs(cap, req["modules"]) if _label(s) in labels]
    sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in results]))


def inspect(
    target: str | int = "sm90",
    modules: Iterable[str] | None = None,
    kernel_filter: str | Sequence[str] | None = None,
) -> list[InspectResult]:
    """Compile every shipped configuration of the scanned modules for ``target``.

    ``modules``: import paths to scan (default :data:`INSPECT_MODULES`).
    ``kernel_filter``: keep only specs whose ``"<kernel> <config>"`` contains this substring
    (or any of these substrings).  Under the Triton interpreter the compilation runs in a
    child process without it (interpreted kernels cannot be compiled).
    """
    cap = parse_target(target)
    mods = tuple(INSPECT_MODULES if modules is None else modules)
    specs = [s for s in collect_specs(cap, mods) if _matches(_label(s), kernel_filter)]
    if not specs:
        return []
    jobs = _jobs(len(specs))
    if interpreter_on() or jobs > 1:
        return _inspect_in_subprocess(cap, mods, [_label(s) for s in specs], jobs)
    return [compile_spec(s, cap) for s in specs]

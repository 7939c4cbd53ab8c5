"""Offline compile reports: build every shipped kernel configuration for a target GPU,
without a GPU, and read registers, spills, shared memory and tensor-core use.

How it works: each module named in :data:`INSPECT_MODULES` exposes a hook

    def inspect_specs(capability: int = 90) -> list[KernelSpec]

returning one :class:`KernelSpec` per (kernel, shipped configuration) it would launch on a
GPU of that compute capability (e.g. 90 for sm_90), specialised as a typical launch is.
:func:`inspect` compiles each spec with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", capability, 32))`` and reads

* ``registers``, ``stack_bytes``, ``spills`` -- from ``cuobjdump -res-usage`` on the cubin
  (REG per thread; STACK bytes per thread; spills = STACK + LOCAL bytes per thread, > 0 means
  the kernel spills),
* ``shared_bytes`` -- Triton's shared-memory allocation (bytes per program), compared with the
  target's opt-in limit per block (``SMEM_LIMIT``),
* instruction counts, static (instructions in the code, not executions), read from SASS
  (``cuobjdump -sass``), or from PTX when no cuobjdump is found:
  ``wgmma`` -- Hopper warpgroup MMA (SASS ``HGMMA``/``QGMMA``/``IGMMA``; PTX ``wgmma.mma_async``),
  ``mma_sync`` -- warp-level MMA (SASS ``HMMA``/``QMMA``/``IMMA``; PTX ``mma.sync``),
  ``tma_loads`` / ``tma_stores`` -- tensor-memory-accelerator copies (SASS ``UTMALDG`` /
  ``UTMASTG``; PTX ``cp.async.bulk.tensor`` global->shared / shared->global),
* ``tensor_core`` -- ``wgmma`` or ``mma_sync`` > 0,
* ``warp_specialized`` -- whether warp specialization took effect in the code, not whether it
  was asked for: the partitions of a warp-specialized kernel hand registers to each other with
  ``setmaxnreg`` (PTX) / ``USETMAXREG`` (SASS); Triton ignores the request silently for
  loops and tiles it cannot split (e.g. 8 warps at 128x256 on sm_90).

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
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ._runtime import cache_dir, interpreter_on

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
    "Progress",
]

#: ``progress(done, total)``, called after each configuration is compiled (or found cached).
Progress = Callable[[int, int], None]

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
    stack_bytes: int | None = None
    spills: int | None = None
    shared_bytes: int | None = None
    smem_limit: int | None = None
    tensor_core: bool | None = None
    wgmma: int | None = None
    mma_sync: int | None = None
    tma_loads: int | None = None
    tma_stores: int | None = None
    warp_specialized: bool | None = None
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

# static instruction counts: SASS opcodes (a word, possibly with .modifiers) and PTX mnemonics
_SASS_OPS = {
    "wgmma": r"\b[HQI]GMMA\b",
    "mma_sync": r"\b(?:HMMA|QMMA|IMMA)\b",
    "tma_loads": r"\bUTMALDG\b",
    "tma_stores": r"\bUTMASTG\b",
    "setmaxnreg": r"\bUSETMAXREG\b",
}
_PTX_OPS = {
    "wgmma": r"\bwgmma\.mma_async\b",
    "mma_sync": r"\bmma\.sync\b",
    "tma_loads": r"\bcp\.async\.bulk\.tensor\.\w+\.shared::cluster\.global\b",
    "tma_stores": r"\bcp\.async\.bulk\.tensor\.\w+\.global\.shared::cta\b",
    "setmaxnreg": r"\bsetmaxnreg\b",
}


def count_ops(text: str, patterns: Mapping[str, str]) -> dict[str, int]:
    """Occurrences of each pattern in assembly text, comments and labels excluded."""
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    return {name: len(re.findall(p, code)) for name, p in patterns.items()}


def _cubin_facts(cubin: bytes) -> dict:
    """REG/STACK/LOCAL from ``cuobjdump -res-usage`` and SASS instruction counts."""
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
            facts["stack_bytes"] = int(m.group(2))
            facts["spills"] = int(m.group(2)) + int(m.group(4))
        if re.search(r"^\s+/\*[0-9a-f]{4}\*/", out, re.M):  # SASS was disassembled
            facts["sass"] = count_ops(out, _SASS_OPS)
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
        ptx_counts = count_ops(ptx, _PTX_OPS)
        facts = _cubin_facts(cubin) if cubin else {}
        counts = facts.get("sass") or ptx_counts
        result.registers = facts.get("registers")
        result.stack_bytes = facts.get("stack_bytes")
        result.spills = facts.get("spills")
        result.wgmma = counts["wgmma"]
        result.mma_sync = counts["mma_sync"]
        result.tma_loads = counts["tma_loads"]
        result.tma_stores = counts["tma_stores"]
        result.tensor_core = result.wgmma + result.mma_sync > 0
        result.warp_specialized = counts["setmaxnreg"] > 0 or ptx_counts["setmaxnreg"] > 0
        result.extra = {
            "counted_in": "sass" if facts.get("sass") else "ptx",
            "ptx": ptx_counts,
            "tma": result.tma_loads + result.tma_stores > 0,
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


class _Counter:
    """Thread-safe ``done/total`` for a progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress
        self._lock = threading.Lock()

    def step(self, n: int = 1) -> None:
        if self.progress is None or n <= 0:
            return
        with self._lock:
            self.done += n
            self.progress(self.done, self.total)


_DONE_MARK = "#compiled"


def _inspect_in_subprocess(cap: int, mods: tuple[str, ...], labels: list[str], jobs: int = 1,
                           counter: _Counter | None = None) -> list[InspectResult]:
    """Compile in child processes without the interpreter, ``jobs`` of them side by side (once
    per spec).  Under the Triton interpreter ``@triton.jit`` gives interpreted functions, which
    cannot be compiled; on a GPU machine the children compile in parallel.  Each child prints
    a line per compiled spec (for progress), then its results as one JSON line."""
    missing = [lb for lb in labels if (cap, mods, lb) not in _CHILD_RESULTS]
    if counter is not None:
        counter.step(len(labels) - len(missing))
    if missing:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if interpreter_on() and "TRITON_CACHE_DIR" not in env:
            # a cache of our own, so repeated runs (the test suite) reuse compiled kernels
            env["TRITON_CACHE_DIR"] = str(cache_dir() / "triton-inspect")
        jobs = max(1, min(jobs, len(missing)))
        chunks = [missing[i::jobs] for i in range(jobs)]  # interleaved: similar kernels spread out

        def run(chunk: list[str]) -> tuple[int, str, str]:
            request = json.dumps({"target": cap, "modules": list(mods), "labels": chunk})
            with tempfile.TemporaryFile("w+") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-c", "import sys; from flopscale.kernels.inspect import _child; _child(sys.stdin.read())"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                )
                proc.stdin.write(request)
                proc.stdin.close()
                last = ""
                for line in proc.stdout:
                    if line.startswith(_DONE_MARK):
                        if counter is not None:
                            counter.step()
                    elif line.strip():
                        last = line
                code = proc.wait()
                err.seek(0)
                return code, last, err.read()

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
    results = []
    for s in collect_specs(cap, req["modules"]):
        if _label(s) in labels:
            results.append(compile_spec(s, cap))
            sys.stdout.write(f"{_DONE_MARK} {_label(s)}\n")
            sys.stdout.flush()
    sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in results]) + "\n")


def inspect(
    target: str | int = "sm90",
    modules: Iterable[str] | None = None,
    kernel_filter: str | Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[InspectResult]:
    """Compile every shipped configuration of the scanned modules for ``target``.

    ``modules``: import paths to scan (default :data:`INSPECT_MODULES`).
    ``kernel_filter``: keep only specs whose ``"<kernel> <config>"`` contains this substring
    (or any of these substrings).  ``progress(done, total)`` is called as configurations
    finish.  Under the Triton interpreter the compilation runs in a child process without it
    (interpreted kernels cannot be compiled).
    """
    cap = parse_target(target)
    mods = tuple(INSPECT_MODULES if modules is None else modules)
    specs = [s for s in collect_specs(cap, mods) if _matches(_label(s), kernel_filter)]
    if not specs:
        return []
    counter = _Counter(len(specs), progress)
    jobs = _jobs(len(specs))
    if interpreter_on() or jobs > 1:
        return _inspect_in_subprocess(cap, mods, [_label(s) for s in specs], jobs, counter)
    results = []
    for s in specs:
        results.append(compile_spec(s, cap))
        counter.step()
    return results

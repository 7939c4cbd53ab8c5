"""Budgets: GPU-days <-> FLOPs <-> wall-clock.

Units: compute in FLOP (model FLOPs: the count MFU divides), rates in FLOP/s, time in seconds
or days (86,400 s), 1 PF-day = 8.64e19 FLOP.

Forward:  ``C = GPUs x days x 86,400 x peak(dtype) x MFU``, where ``peak`` is the card's dense
datasheet rate for ``dtype`` (never the 2:4-sparse figure) and MFU is the share of it the
training run achieves, either given or measured (:func:`load_measured`).

Inverse:  a run of ``F`` total FLOPs (``D`` tokens x FLOPs per token) takes
``F / (GPUs x peak x MFU)`` seconds of wall-clock and ``GPUs x`` that of GPU time.

MFU depends on the model's shape; :class:`MFUModel` holds either one value (then it is
*assumed constant* across model sizes, and says so) or a measured sweep of MFU against the
parameter count N, interpolated linearly in log N and held at the nearest measured value
outside the measured range (and says that too).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SECONDS_PER_DAY",
    "PF_DAY",
    "pf_days",
    "compute_budget",
    "check_mfu",
    "MFUModel",
    "Budget",
    "make_budget",
    "TrainTime",
    "train_time",
    "Measured",
    "load_measured",
    "MeasuredFileError",
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_OVERLAP",
    "BACKWARD_SHARE",
    "StepTime",
    "CommModel",
]

SECONDS_PER_DAY = 86_400.0
PF_DAY = 1e15 * SECONDS_PER_DAY  # 8.64e19 FLOP


def pf_days(flop: float) -> float:
    """FLOP -> PF-days (1 PF-day = 1e15 FLOP/s for one day = 8.64e19 FLOP)."""
    return flop / PF_DAY


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v


def check_mfu(mfu: float) -> float:
    """MFU must lie in (0, 1]."""
    try:
        v = float(mfu)
    except (TypeError, ValueError):
        raise ValueError(f"MFU must be a number in (0, 1], got {mfu!r}") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"MFU must be in (0, 1], got {mfu!r}")
    return v


def compute_budget(gpus: float, days: float, peak_flop_per_s: float, mfu: float) -> float:
    """``C = gpus x days x 86,400 x peak x MFU`` in FLOP (model FLOPs)."""
    return (
        _positive("GPUs", gpus)
        * _positive("days", days)
        * SECONDS_PER_DAY
        * _positive("peak FLOP/s", peak_flop_per_s)
        * check_mfu(mfu)
    )


@dataclass
class MFUModel:
    """MFU as a function of the parameter count N.

    ``points`` are ``(N, mfu)`` pairs (``N`` may be None for a single value that does not
    belong to a size).  One point: constant.  Several: linear interpolation in ``log N``,
    held at the nearest measured value outside the measured range.  ``source`` says where the
    values come from ("given", "measured", ...).
    """

    points: list[tuple[float | None, float]]
    source: str = "given"

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("MFUModel needs at least one value")
        for _, m in self.points:
            check_mfu(m)
        sized = [(float(n), float(m)) for n, m in self.points if n is not None]
        if len(sized) >= 2:
            sized.sort()
            # average duplicates of the same N
            merged: dict[float, list[float]] = {}
            for n, m in sized:
                merged.setdefault(n, []).append(m)
            self.points = [(n, sum(ms) / len(ms)) for n, ms in sorted(merged.items())]

    @classmethod
    def constant(cls, mfu: float, source: str = "given") -> "MFUModel":
        return cls([(None, check_mfu(mfu))], source)

    @property
    def is_constant(self) -> bool:
        return len(self.points) < 2

    @property
    def n_range(self) -> tuple[float, float] | None:
        if self.is_constant:
            return None
        return self.points[0][0], self.points[-1][0]  # type: ignore[return-value]

    def __call__(self, n_params: float | None = None) -> float:
        if self.is_constant or n_params is None:
            if self.is_constant:
                return self.points[0][1]
            # no size given: the median of the measured values
            ms = sorted(m for _, m in self.points)
            k = len(ms)
            return ms[k // 2] if k % 2 else 0.5 * (ms[k // 2 - 1] + ms[k // 2])
        x = math.log(float(n_params))
        xs = [math.log(n) for n, _ in self.points]  # type: ignore[arg-type]
        ys = [m for _, m in self.points]
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        for i in range(1, len(xs)):
            if x <= xs[i]:
                t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + t * (ys[i] - ys[i - 1])
        return ys[-1]  # pragma: no cover

    def extrapolated(self, n_params: float) -> bool:
        """True when ``n_params`` lies outside the measured sizes (value held at the nearest)."""
        r = self.n_range
        return r is not None and not (r[0] <= n_params <= r[1])

    def describe(self, n_params: float | None = None) -> str:
        if self.is_constant:
            return f"MFU {self.points[0][1]:.3f} ({self.source}), assumed constant across model sizes"
        lo, hi = self.n_range  # type: ignore[misc]
        text = (
            f"MFU interpolated in log N between {len(self.points)} points ({self.source}; "
            f"N {lo:.3g} to {hi:.3g} parameters)"
        )
        if n_params is not None and self.extrapolated(n_params):
            text += f"; N = {n_params:.3g} is outside that range, so the nearest measured value is held"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [{"N": n, "mfu": m} for n, m in self.points],
            "source": self.source,
            "constant": self.is_constant,
        }


@dataclass
class Budget:
    """A compute budget and how it was derived."""

    compute_flop: float
    gpus: float | None = None
    days: float | None = None
    device: str | None = None
    dtype: str | None = None
    peak_flop_per_s: float | None = None
    peak_source: str | None = None
    mfu: float | None = None
    mfu_source: str | None = None

    @property
    def pf_days(self) -> float:
        return pf_days(self.compute_flop)

    @property
    def derivation(self) -> str:
        if self.gpus is None:
            return f"given directly: C = {self.compute_flop:.4g} FLOP"
        return (
            f"C = {self.gpus:g} GPUs x {self.days:g} days x 86,400 s/day x "
            f"{self.peak_flop_per_s:.4g} FLOP/s ({self.device} {self.dtype} {self.peak_source}) x "
            f"MFU {self.mfu:.3f} ({self.mfu_source}) = {self.compute_flop:.4g} FLOP"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute_flop": self.compute_flop,
            "pf_days": self.pf_days,
            "gpus": self.gpus,
            "days": self.days,
            "device": self.device,
            "dtype": self.dtype,
            "peak_flop_per_s": self.peak_flop_per_s,
            "peak_source": self.peak_source,
            "mfu": self.mfu,
            "mfu_source": self.mfu_source,
            "derivation": self.derivation,
        }


def make_budget(
    gpus: float,
    days: float,
    peak_flop_per_s: float,
    mfu: float,
    *,
    device: str | None = None,
    dtype: str | None = None,
    peak_source: str = "datasheet",
    mfu_source: str = "given",
) -> Budget:
    c = compute_budget(gpus, days, peak_flop_per_s, mfu)
    return Budget(c, float(gpus), float(days), device, dtype, float(peak_flop_per_s), peak_source, float(mfu), mfu_source)


@dataclass(frozen=True)
class TrainTime:
    """Time to execute ``total_flop`` model FLOPs on ``gpus`` cards at ``peak x mfu`` each."""

    total_flop: float
    gpus: float
    rate_flop_per_s: float  # per GPU, model FLOPs

    @property
    def seconds(self) -> float:
        return self.total_flop / (self.gpus * self.rate_flop_per_s)

    @property
    def wall_clock_days(self) -> float:
        return self.seconds / SECONDS_PER_DAY

    @property
    def gpu_days(self) -> float:
        return self.wall_clock_days * self.gpus

    @property
    def gpu_hours(self) -> float:
        return self.gpu_days * 24.0

    def to_dict(self) -> dict[str, float]:
        return {
            "total_flop": self.total_flop,
            "gpus": self.gpus,
            "rate_flop_per_s_per_gpu": self.rate_flop_per_s,
            "seconds": self.seconds,
            "wall_clock_days": self.wall_clock_days,
            "gpu_days": self.gpu_days,
            "gpu_hours": self.gpu_hours,
        }


def train_time(
    total_flop: float | None = None,
    *,
    gpus: float,
    peak_flop_per_s: float,
    mfu: float,
    flops_per_token: float | None = None,
    tokens: float | None = None,
) -> TrainTime:
    """Wall-clock and GPU time of a run: ``total_flop`` or ``flops_per_token x tokens``."""
    if total_flop is None:
        if flops_per_token is None or tokens is None:
            raise ValueError("give total_flop, or flops_per_token and tokens")
        total_flop = _positive("FLOPs per token", flops_per_token) * _positive("tokens", tokens)
    rate = _positive("peak FLOP/s", peak_flop_per_s) * check_mfu(mfu)
    return TrainTime(_positive("total FLOP", total_flop), _positive("GPUs", gpus), rate)


# ----------------------------------------------------------------------------------------
# measured files (from `flopscale audit --json` or `flopscale profile --json`)
# ----------------------------------------------------------------------------------------


class MeasuredFileError(ValueError):
    """A measured file that cannot be used (missing, unreadable, no MFU, other card)."""


@dataclass
class Measured:
    """Achieved model-FLOP rates read from a measured file.

    ``points``: ``(N or None, achieved FLOP/s per GPU)``; ``device_key``/``device_name`` the
    card they were measured on; ``dtype`` when the file says.
    """

    points: list[tuple[float | None, float]]
    device_key: str | None
    device_name: str | None
    dtype: str | None
    path: str
    kind: str = "audit"
    notes: list[str] = field(default_factory=list)

    def mfu_model(self, peak_flop_per_s: float, peak_label: str = "datasheet") -> MFUModel:
        """MFU against ``peak_flop_per_s`` (the budget's peak) at each measured point."""
        pts = []
        for n, rate in self.points:
            m = rate / peak_flop_per_s
            if not (0 < m <= 1):
                raise MeasuredFileError(
                    f"{self.path}: measured {rate:.4g} FLOP/s is {m:.3g} of the {peak_label} peak "
                    f"{peak_flop_per_s:.4g} FLOP/s, outside (0, 1]: wrong card or dtype?"
                )
            pts.append((n, m))
        src = f"measured from {Path(self.path).name}"
        return MFUModel(pts, src)


def _text_field(obj: dict, key: str) -> str | None:
    """A string field, None when absent or null; any other JSON type is refused."""
    v = obj.get(key)
    if v is None or isinstance(v, str):
        return v or None
    raise MeasuredFileError(f"measured file: field {key!r} must be a string, got {json.dumps(v)[:40]}")


def _number(obj: dict, key: str) -> float | None:
    """A numeric field, None when absent or null; ``true``/``false``, strings, lists and
    objects are refused rather than read as numbers (JSON ``true`` is not 1 FLOP/s)."""
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise MeasuredFileError(f"measured file: field {key!r} must be a number, got {json.dumps(v)[:40]}")
    return float(v)


def _device_fields(obj: dict) -> tuple[str | None, str | None]:
    dev = obj.get("device")
    key = name = None
    if isinstance(dev, dict):
        key = _text_field(dev, "key") or _text_field(dev, "spec_key")
        name = _text_field(dev, "name") or _text_field(dev, "device_name")
    elif isinstance(dev, str):
        name = dev
    elif dev is not None:
        raise MeasuredFileError(f"measured file: field 'device' must be an object or a string, got "
                                f"{json.dumps(dev)[:40]}")
    key = key or _text_field(obj, "device_key") or _text_field(obj, "gpu")
    name = name or _text_field(obj, "device_name")
    return key, name


def _rate_of(entry: dict) -> float | None:
    """Achieved model FLOP/s of one measurement entry, from whichever fields it has."""
    for k in ("achieved_flop_per_s", "model_flop_per_s", "flop_per_s", "achieved_flops_per_s"):
        v = _number(entry, k)
        if v is not None and v > 0 and math.isfinite(v):
            return v
    timing = entry.get("timing")
    if isinstance(timing, dict):
        r = _rate_of(timing)
        if r:
            return r
    mfu = entry.get("mfu")
    if isinstance(mfu, dict):
        v, peak = _number(mfu, "value"), _number(mfu, "peak_flop_per_s")
        if v is not None and peak is not None and v > 0 and peak > 0 and math.isfinite(v * peak):
            return v * peak
    flops, t = _number(entry, "model_flops"), _number(entry, "time_s")
    if flops is not None and t is not None and t > 0 and flops > 0 and math.isfinite(flops / t):
        return flops / t
    return None


def _n_of(entry: dict) -> float | None:
    p = entry.get("params")
    if isinstance(p, dict) and _number(p, "total") is not None:
        return _number(p, "total")  # total parameters: the count the plan's shapes use
    for k in ("N", "n_params", "params"):
        if k == "params" and isinstance(entry.get(k), dict):
            continue
        v = _number(entry, k)
        if v is not None and v > 0:
            return v
    return None


def _from_profile(obj: dict, p: Path, dtype: str | None) -> Measured:
    """A ``flopscale profile --json`` file: kernel rows with ``flop_per_s``."""
    rows = [r for r in obj["rows"] if isinstance(r, dict) and (_number(r, "flop_per_s") or 0) > 0]
    ours = [r for r in rows if r.get("provider") == "flopscale"]
    rows = ours or rows
    if dtype is not None:
        rows = [r for r in rows if _text_field(r, "dtype") in (None, dtype)]
    if not rows:
        raise MeasuredFileError(
            f"measured file {p} has no profiled rows with a FLOP rate" + (f" in {dtype}" if dtype else "")
        )
    rates = sorted(float(r["flop_per_s"]) for r in rows)
    k = len(rates)
    med = rates[k // 2] if k % 2 else 0.5 * (rates[k // 2 - 1] + rates[k // 2])
    key, name = _device_fields(obj)
    dts = {r.get("dtype") for r in rows if r.get("dtype")}
    return Measured(
        [(None, med)], key, name, dtype or (next(iter(dts)) if len(dts) == 1 else None), str(p), kind="profile",
        notes=[f"median kernel rate of {k} profiled row(s) ({', '.join(sorted({str(r.get('case')) for r in rows}))}): "
               "a kernel-level rate, optimistic for a whole training step; 'flopscale audit --json' measures a step"],
    )


def load_measured(path: str | Path, dtype: str | None = None) -> Measured:
    """Read achieved FLOP rates from ``flopscale audit --json`` (one step or ``--sweep``) or
    ``flopscale profile --json`` output.

    Accepted: an object with a device and an achieved rate (``achieved_flop_per_s``, or
    ``mfu.value`` with ``mfu.peak_flop_per_s``, or ``model_flops``/``time_s``); optionally a
    ``sweep`` (or ``runs``) list of such entries with parameter counts; a list of them; or a
    profile's ``rows`` (the median ``flop_per_s`` of the flopscale rows in ``dtype``, labelled
    as a kernel-level rate).  Raises :class:`MeasuredFileError` with one clear line otherwise.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MeasuredFileError(f"cannot read measured file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MeasuredFileError(f"measured file {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise MeasuredFileError(f"measured file {p} is not JSON ({why})") from None
    try:
        return _parse_measured(obj, p, dtype)
    except MeasuredFileError as exc:
        msg = str(exc)
        raise MeasuredFileError(msg.replace("measured file:", f"measured file {p}:", 1)) from None


def _parse_measured(obj: Any, p: Path, dtype: str | None) -> Measured:
    entries: list[dict]
    top: dict
    if isinstance(obj, list):
        entries, top = [e for e in obj if isinstance(e, dict)], (obj[0] if obj and isinstance(obj[0], dict) else {})
    elif isinstance(obj, dict) and isinstance(obj.get("rows"), list) and not _rate_of(obj):
        return _from_profile(obj, p, dtype)
    elif isinstance(obj, dict):
        top = obj
        sub = obj.get("sweep") or obj.get("runs")
        entries = [e for e in sub if isinstance(e, dict) and _rate_of(e)] if isinstance(sub, list) else []
        if not entries:
            entries = [obj]
        elif _rate_of(obj) and _n_of(obj) is not None and not any(_n_of(e) == _n_of(obj) for e in entries):
            entries = [obj, *entries]
    else:
        raise MeasuredFileError(f"measured file {p} holds neither an object nor a list")
    key, name = _device_fields(top)
    dtype = _text_field(top, "dtype")
    points: list[tuple[float | None, float]] = []
    keys = set()
    for e in entries:
        rate = _rate_of(e)
        if rate is None:
            continue
        k, _ = _device_fields(e)
        if k:
            keys.add(k)
        points.append((_n_of(e), rate))
    if not points:
        raise MeasuredFileError(
            f"measured file {p} has no achieved FLOP rate (expected output of 'flopscale audit --json' "
            "or 'flopscale profile --json')"
        )
    if key:
        keys.add(key)
    if len(keys) > 1:
        raise MeasuredFileError(f"measured file {p} mixes devices: {sorted(keys)}")
    key = next(iter(keys)) if keys else None
    if len(points) > 1 and any(n is None for n, _ in points):
        # sizes unknown for some: keep only the sized ones if any, else average
        sized = [(n, r) for n, r in points if n is not None]
        points = sized or [(None, sum(r for _, r in points) / len(points))]
    return Measured(points, key, name, dtype, str(p), kind="audit" if "model_flops" in top else "profile")


# ----------------------------------------------------------------------------------------
# communication: the gradient all-reduce of a data-parallel run
# ----------------------------------------------------------------------------------------

#: assumed tokens per optimizer step (global batch) when none is given: 4M tokens (2**22),
#: the order of LLaMA's 4M and Chinchilla's 1.5M-3M token batches
DEFAULT_BATCH_TOKENS = 2**22
#: assumed share of the gradient all-reduce that runs behind the backward pass: none (an
#: upper bound on the step time); measure it with ``torchrun -m flopscale.profiler.distributed ddp``
DEFAULT_OVERLAP = 0.0
#: the backward pass's share of a step's compute time, taken equal to its share of the model
#: FLOPs (backward = 2 x forward for every matmul and attention product)
BACKWARD_SHARE = 2.0 / 3.0
#: DDP's default gradient bucket (bytes): the message size a measured bandwidth is read at
DEFAULT_BUCKET_BYTES = 25 * 2**20


@dataclass(frozen=True)
class StepTime:
    """One optimizer step of a data-parallel run on ``gpus`` GPUs, in seconds.

    ``compute_s``: model FLOPs of the step / (GPUs x peak x MFU); ``comm_s``: the gradient
    all-reduce alone; ``hidden_s``: the part of it that runs behind the backward pass;
    ``exposed_s = comm_s - hidden_s``; ``step_s = compute_s + exposed_s``.
    """

    gpus: int
    tokens: float
    params: float
    grad_bytes: float
    compute_s: float
    comm_s: float
    hidden_s: float
    exposed_s: float
    step_s: float
    mfu: float

    @property
    def efficiency(self) -> float:
        """compute / step: the share of the step the GPUs spend computing."""
        return self.compute_s / self.step_s if self.step_s > 0 else 1.0

    @property
    def mfu_at_scale(self) -> float:
        return self.mfu * self.efficiency

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(efficiency=self.efficiency, mfu_at_scale=self.mfu_at_scale)
        return out


@dataclass
class CommModel:
    """The gradient all-reduce of data-parallel training on ``nodes x gpus_per_node`` GPUs.

    Per optimizer step of ``batch_tokens`` tokens (the global batch; gradient accumulation
    inside a step adds no communication):

    * ``compute_s = flops_per_token x batch_tokens / (GPUs x peak x MFU)``;
    * ``comm_s``: all-reduce of ``params x grad_bytes_per_param`` bytes -- with a measured
      bus bandwidth ``B`` (read at the gradient bucket size), ``bytes x 2(n-1)/n / B`` on
      ``n = nodes x gpus_per_node`` ranks; otherwise hierarchical
      (:func:`profiler.collectives.hierarchical_allreduce_time_s`: inside a node at
      ``intra_Bps``, across nodes on ``gpus_per_node`` rails at ``inter_Bps`` each);
    * ``hidden_s = min(overlap x comm_s, BACKWARD_SHARE x compute_s)``: communication runs
      behind the backward pass at most; ``exposed_s = comm_s - hidden_s``;
    * ``step_s = compute_s + exposed_s``, MFU at scale ``= MFU x compute_s / step_s``.

    ``sources`` says, part by part, whether a figure is measured, given or assumed, and where
    it comes from: ``{part: {"value": ..., "status": ..., "source": ...}}``.
    """

    nodes: int
    gpus_per_node: int
    grad_bytes_per_param: float
    batch_tokens: float = DEFAULT_BATCH_TOKENS
    overlap: float = DEFAULT_OVERLAP
    intra_Bps: float | None = None
    inter_Bps: float | None = None
    measured: Any = None  # profiler.collectives.MeasuredAllReduce
    bucket_bytes: float = DEFAULT_BUCKET_BYTES
    backward_share: float = BACKWARD_SHARE
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")
        _positive("gradient bytes per parameter", self.grad_bytes_per_param)
        _positive("tokens per step", self.batch_tokens)
        _positive("bucket size", self.bucket_bytes)
        if not (0.0 <= float(self.overlap) <= 1.0):
            raise ValueError(f"overlap must be in [0, 1], got {self.overlap!r}")
        if not (0.0 <= float(self.backward_share) <= 1.0):
            raise ValueError(f"backward share must be in [0, 1], got {self.backward_share!r}")
        for name in ("intra_Bps", "inter_Bps"):
            v = getattr(self, name)
            if v is not None:
                _positive(name.replace("_Bps", "-node bandwidth"), v)
        if self.measured is None and self.gpus > 1:
            if self.gpus_per_node > 1 and self.intra_Bps is None:
                raise ValueError("no intra-node bandwidth for this card: give a measured collectives file")
            if self.nodes > 1 and self.inter_Bps is None:
                raise ValueError(f"{self.nodes} nodes need the inter-node bandwidth: give --interconnect-gbps "
                                 "or a measured collectives file")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def algorithm(self) -> str:
        if self.gpus == 1:
            return "none (one GPU)"
        if self.measured is not None:
            return "ring, at the measured bus bandwidth"
        return "hierarchical: inside each node, then across nodes on one rail per GPU"

    def grad_bytes(self, n_params: float) -> float:
        return float(n_params) * float(self.grad_bytes_per_param)

    def allreduce_s(self, n_params: float) -> float:
        """Seconds to all-reduce the gradient of ``n_params`` parameters (all of them: embeddings too)."""
        from .collectives import allreduce_time_s, hierarchical_allreduce_time_s

        nbytes = self.grad_bytes(n_params)
        if self.gpus == 1 or nbytes <= 0:
            return 0.0
        if self.measured is not None:
            return allreduce_time_s(nbytes, self.gpus, self.measured.busbw_at(min(self.bucket_bytes, nbytes)))
        return hierarchical_allreduce_time_s(nbytes, self.nodes, self.gpus_per_node, self.intra_Bps or 1.0,
                                             self.inter_Bps or 1.0)

    def step(self, n_params: float, flops_per_token: float, peak_flop_per_s: float, mfu: float) -> StepTime:
        """One optimizer step (see the class docstring) for a model of ``n_params`` parameters."""
        rate = _positive("peak FLOP/s", peak_flop_per_s) * check_mfu(mfu)
        compute = _positive("FLOPs per token", flops_per_token) * float(self.batch_tokens) / (self.gpus * rate)
        comm = self.allreduce_s(n_params)
        hidden = min(float(self.overlap) * comm, float(self.backward_share) * compute)
        exposed = comm - hidden
        return StepTime(self.gpus, float(self.batch_tokens), float(n_params), self.grad_bytes(n_params), compute,
                        comm, hidden, exposed, compute + exposed, float(mfu))

    def status(self, kind: str) -> list[str]:
        """The parts whose status is ``kind`` ("measured", "given" or "assumed")."""
        return [k for k, v in self.sources.items() if v.get("status") == kind]

    def to_dict(self, step: StepTime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "gpus": self.gpus,
            "algorithm": self.algorithm,
            "grad_bytes_per_param": self.grad_bytes_per_param,
            "batch_tokens": self.batch_tokens,
            "overlap": self.overlap,
            "backward_share": self.backward_share,
            "intra_node_Bps": self.intra_Bps,
            "inter_node_Bps_per_gpu": self.inter_Bps,
            "measured_busbw_Bps": (self.measured.busbw_at(min(self.bucket_bytes, step.grad_bytes))
                                   if self.measured is not None and step is not None else None),
            "bucket_bytes": self.bucket_bytes,
            "measured": self.status("measured"),
            "given": self.status("given"),
            "assumed": self.status("assumed"),
            "sources": self.sources,
        }
        if step is not None:
            out["step"] = step.to_dict()
        return out

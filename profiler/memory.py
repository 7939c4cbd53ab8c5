"""Training memory per GPU: model states (weights, gradients, optimizer) and activations.

Units: bytes.  The published forms used here (cite them where a number depends on them):

* **Model states, mixed-precision Adam** (Rajbhandari et al. 2020, ZeRO, Sec. 3.1): 2 bytes of
  16-bit weights + 2 bytes of 16-bit gradients + K = 12 bytes of optimizer state (fp32 master
  weights, momentum and variance) = 16 bytes per parameter.  ZeRO shards them over the ``dp``
  data-parallel ranks: stage 1 the optimizer state (``2 + 2 + 12/dp``), stage 2 the gradients
  too (``2 + 14/dp``), stage 3 the weights too (``16/dp``); ZeRO's Figure 1: 7.5B parameters on
  64 GPUs -> 120, 31.4, 16.6 and 1.9 GB per GPU.
* **Activations per transformer layer** (Korthikanti et al. 2022, Sec. 4 and Table 2), 16-bit
  activations, sequence ``s``, micro-batch ``b``, hidden ``h``, heads ``a``, tensor-parallel
  degree ``t``:

  - no parallelism, no recompute: ``s b h (34 + 5 a s / h)``;
  - tensor + sequence parallel: ``s b h (34 + 5 a s / h) / t``;
  - tensor parallel without sequence parallelism: ``s b h (10 + 24/t + 5 a s / (h t))``;
  - selective recompute (attention scores, softmax and its dropout recomputed) with sequence
    parallelism: ``34 s b h / t``; without: ``s b h (10 + 24/t)``;
  - full recompute (only each layer's input kept): ``2 s b h / t`` (with sequence parallelism).

  With 1F1B pipelining (Narayanan et al. 2021) the first stage holds ``p`` micro-batches of
  its ``L/p`` layers, so its activations are those of ``L`` layers of one micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "WEIGHT_BYTES",
    "GRAD_BYTES",
    "OPTIMIZER_BYTES",
    "RECOMPUTE",
    "ZERO_STAGES",
    "model_state_bytes_per_param",
    "activation_bytes_per_layer",
    "MemoryBreakdown",
]

#: 16-bit weights, 16-bit gradients, fp32 master weights + Adam momentum + variance (ZeRO, K = 12)
WEIGHT_BYTES = 2.0
GRAD_BYTES = 2.0
OPTIMIZER_BYTES = 12.0
RECOMPUTE = ("none", "selective", "full")
ZERO_STAGES = (0, 1, 2, 3)


def _check_zero(stage: int) -> int:
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    return int(stage)


def model_state_bytes_per_param(zero_stage: int = 0, dp: int = 1, *, weight_bytes: float = WEIGHT_BYTES,
                                grad_bytes: float = GRAD_BYTES, optimizer_bytes: float = OPTIMIZER_BYTES
                                ) -> dict[str, float]:
    """Bytes per parameter held by one GPU for weights, gradients and optimizer state.

    Mixed-precision Adam by default (2 + 2 + 12 bytes, Rajbhandari et al. 2020; a run in one
    dtype of ``e`` bytes holds ``e + e + 2e``), sharded over ``dp`` ranks up to ZeRO
    ``zero_stage``: 1 shards the optimizer, 2 the gradients too, 3 the weights too (FSDP's full
    sharding).  Returns ``{"weights", "gradients", "optimizer", "total"}``.
    """
    stage = _check_zero(zero_stage)
    if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
        raise ValueError(f"data-parallel degree must be a positive integer, got {dp!r}")
    w = weight_bytes / (dp if stage >= 3 else 1)
    g = grad_bytes / (dp if stage >= 2 else 1)
    o = optimizer_bytes / (dp if stage >= 1 else 1)
    return {"weights": w, "gradients": g, "optimizer": o, "total": w + g + o}


def activation_bytes_per_layer(
    seq: int,
    micro_batch: int,
    hidden: int,
    heads: int,
    tp: int = 1,
    recompute: str = "none",
    sequence_parallel: bool = True,
) -> float:
    """Activation bytes one transformer layer keeps for the backward pass (Korthikanti et al.
    2022, Table 2; 16-bit activations; see the module docstring for each form)."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
    s, b, h, a, t = (float(x) for x in (seq, micro_batch, hidden, heads, tp))
    sbh = s * b * h
    if recompute == "full":
        return 2.0 * sbh / (t if sequence_parallel else 1.0)
    if sequence_parallel:
        base = 34.0 / t
    else:
        base = 10.0 + 24.0 / t
    if recompute == "selective":
        return sbh * base
    return sbh * (base + 5.0 * a * s / (h * t))


@dataclass(frozen=True)
class MemoryBreakdown:
    """Memory of one GPU (the most loaded pipeline stage), in bytes.

    ``capacity_bytes`` is the card's memory (device table); ``reserve`` the share of it kept
    for the CUDA context, allocator fragmentation and temporary buffers (assumed), so a layout
    fits when ``total_bytes <= (1 - reserve) x capacity_bytes``.
    """

    params_per_gpu: float
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    capacity_bytes: float | None
    reserve: float = 0.10

    @property
    def model_states_bytes(self) -> float:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> float:
        return self.model_states_bytes + self.activations_bytes

    @property
    def usable_bytes(self) -> float | None:
        return None if self.capacity_bytes is None else (1.0 - self.reserve) * self.capacity_bytes

    @property
    def fits(self) -> bool:
        u = self.usable_bytes
        return u is None or self.total_bytes <= u

    @property
    def share(self) -> float | None:
        """total / capacity."""
        return None if not self.capacity_bytes else self.total_bytes / self.capacity_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_per_gpu": self.params_per_gpu,
            "weights_bytes": self.weights_bytes,
            "gradients_bytes": self.gradients_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activations_bytes": self.activations_bytes,
            "total_bytes": self.total_bytes,
            "capacity_bytes": self.capacity_bytes,
            "usable_bytes": self.usable_bytes,
            "reserve": self.reserve,
            "fits": self.fits,
        }

    def to_text(self) -> str:
        gib = 2.0**30
        cap = "" if self.capacity_bytes is None else (
            f" of {self.capacity_bytes / gib:.1f} GiB ({100 * self.share:.0f}%; fits when under "
            f"{100 * (1 - self.reserve):.0f}%)")
        return (f"{self.total_bytes / gib:.1f} GiB per GPU{cap}: weights {self.weights_bytes / gib:.1f}, "
                f"gradients {self.gradients_bytes / gib:.1f}, optimizer {self.optimizer_bytes / gib:.1f}, "
                f"activations {self.activations_bytes / gib:.1f} GiB ({self.params_per_gpu:.4g} parameters)")

    __str__ = to_text


def ceil_div(a: int, b: int) -> int:
    """Integer division rounded up."""
    return -(-int(a) // int(b))


"""Published allocation laws: ``N_opt = k * C^a`` and/or ``D_opt = k' * C^b``, with no loss surface.

Many studies publish how to split a budget rather than a loss law.  Each law here carries its
citation, what its N counts and how its compute is defined; ``lawfit.allocate(C, law=name)``
turns a budget into (N, D) with them (``loss`` is None: these laws predict no loss).

* ``hoffmann2022_approach1`` / ``_approach2``: Hoffmann et al. 2022, Table 2 exponents
  (a = 0.50; a = 0.49), coefficients fixed by the paper's own projections (Table 3 for
  Approach 1: 67 B parameters at 5.76e23 FLOP; Table A3 for Approach 2: 67 B at 6.88e23 FLOP);
  D = C/(6N).
* ``deepseek2024``: DeepSeek LLM (Bi et al. 2024, arXiv:2401.02954, Eq. 4):
  ``M_opt = 0.1715 C^0.5243``, ``D_opt = 5.8316 C^0.4757`` with M the *non-embedding FLOPs per
  token* (attention included) and C = M D.  lawfit reports N = M/6 (6N FLOP per token, so
  6ND = C; the attention FLOPs 6 n_layer l_seq d_model per token are folded into N) - said in
  ``n_counts`` and ``method``.
* ``llama3_2024``: Llama 3 (Grattafiori et al. 2024, arXiv:2407.21783, Section 3.2.1): the
  IsoFLOP law for the optimal number of training tokens ``D*(C) = A C^alpha`` with
  (alpha, A) = (0.537, 0.299); N = C/(6D).  At 3.8e25 FLOP this gives 16.4 T tokens
  and 386 B parameters (the paper: 402 B on 16.55 T).
* ``power:k=...,a=...``: any ``N_opt = k C^a`` a user types (``d=...,b=...`` adds a D law;
  without one, D = C/(6N)).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import LawfitError


@dataclass(frozen=True)
class AllocationLaw:
    """``N_opt = n_coef * C^n_exp`` and/or ``D_opt = d_coef * C^d_exp`` (C in FLOP).

    A missing half follows from ``C = 6 N D``.  ``m_per_token`` marks a law whose "N" is
    DeepSeek's M (non-embedding FLOPs per token); then N = M / 6."""

    name: str
    citation: str
    n_counts: str
    n_coef: float | None = None
    n_exp: float | None = None
    d_coef: float | None = None
    d_exp: float | None = None
    m_per_token: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        if self.n_coef is None and self.d_coef is None:
            raise LawfitError(f"allocation law {self.name}: give N_opt = k*C^a, D_opt = k'*C^b, or both")
        for v in (self.n_coef, self.n_exp, self.d_coef, self.d_exp):
            if v is not None and not math.isfinite(v):
                raise LawfitError(f"allocation law {self.name}: coefficients and exponents must be finite")
        for c, e in ((self.n_coef, self.n_exp), (self.d_coef, self.d_exp)):
            if c is not None and (c <= 0 or e is None or not 0 < e < 1):
                raise LawfitError(f"allocation law {self.name}: need k > 0 and an exponent strictly between 0 and 1 "
                                  f"(got k={c}, a={e})")

    # what the output says about the law
    @property
    def formula(self) -> str:
        parts = []
        if self.n_coef is not None:
            lhs = "M_opt [non-embedding FLOP/token]" if self.m_per_token else "N_opt"
            parts.append(f"{lhs} = {self.n_coef:.6g}*C^{self.n_exp:.6g}")
        if self.d_coef is not None:
            parts.append(f"D_opt = {self.d_coef:.6g}*C^{self.d_exp:.6g}")
        if self.m_per_token:
            parts.append("N = M/6 (C = M*D = 6ND)")
        elif self.n_coef is None:
            parts.append("N = C/(6D)")
        elif self.d_coef is None:
            parts.append("D = C/(6N)")
        return "; ".join(parts)

    def __call__(self, C: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) at budgets ``C`` (FLOP)."""
        C = np.asarray(C, float)
        N = D = None
        if self.n_coef is not None:
            N = self.n_coef * C ** self.n_exp
            if self.m_per_token:
                N = N / 6.0
        if self.d_coef is not None:
            D = self.d_coef * C ** self.d_exp
        if N is None:
            N = C / (6.0 * D)
        if D is None:
            D = C / (6.0 * N)
        return N, D

    def inverse(self, N: Any) -> tuple[np.ndarray, np.ndarray]:
        """(C, D): the budget at which ``N`` parameters are optimal under this law, and its tokens."""
        N = np.asarray(N, float)
        if self.n_coef is not None:
            M = 6.0 * N if self.m_per_token else N
            C = (M / self.n_coef) ** (1.0 / self.n_exp)
        else:
            # N = C / (6 d C^b) = C^(1-b) / (6 d)
            C = (6.0 * self.d_coef * N) ** (1.0 / (1.0 - self.d_exp))
        return C, self(C)[1]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "formula": self.formula, "citation": self.citation, "n_counts": self.n_counts,
                "n_coef": self.n_coef, "n_exp": self.n_exp, "d_coef": self.d_coef, "d_exp": self.d_exp,
                "m_per_token": self.m_per_token, "notes": self.notes, "loss": "none (an allocation law)"}


_HOFF = "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', arXiv:2203.15556"

LAWS: dict[str, AllocationLaw] = {law.name: law for law in (
    AllocationLaw(
        name="hoffmann2022_approach1",
        citation=f"{_HOFF}, Approach 1 (Table 2: a = 0.50; coefficient from Table 3: 67B at 5.76e23 FLOP)",
        n_counts="all parameters, embeddings included (MassiveText runs)",
        n_coef=67e9 / 5.76e23 ** 0.50, n_exp=0.50,
        notes="N_opt = k*C^0.50 through Table 3's 67B / 5.76e23 FLOP row; D = C/(6N)"),
    AllocationLaw(
        name="hoffmann2022_approach2",
        citation=f"{_HOFF}, Approach 2 IsoFLOP (Table 2: a = 0.49; coefficient from Table A3: 67B at 6.88e23 FLOP)",
        n_counts="all parameters, embeddings included (MassiveText runs)",
        n_coef=67e9 / 6.88e23 ** 0.49, n_exp=0.49,
        notes="N_opt = k*C^0.49 through Table A3's Approach 2 row 67B / 6.88e23 FLOP; D = C/(6N)"),
    AllocationLaw(
        name="deepseek2024",
        citation="DeepSeek-AI (Bi et al.) 2024, 'DeepSeek LLM: Scaling Open-Source Language Models with "
                 "Longtermism', arXiv:2401.02954, Eq. 4",
        n_counts=("non-embedding parameters, N = M/6 from the model scale M = non-embedding FLOPs per token "
                  "(M includes attention's 6*n_layer*l_seq*d_model, here folded into N)"),
        n_coef=0.1715, n_exp=0.5243, d_coef=5.8316, d_exp=0.4757, m_per_token=True,
        notes="M_opt = 0.1715*C^0.5243 (FLOP/token), D_opt = 5.8316*C^0.4757, C = M*D; N reported as M/6"),
    AllocationLaw(
        name="llama3_2024",
        citation="Grattafiori et al. (Llama Team) 2024, 'The Llama 3 Herd of Models', arXiv:2407.21783, "
                 "Section 3.2.1: D*(C) = A*C^alpha, (alpha, A) = (0.537, 0.299)",
        n_counts="all parameters (Llama 3 model sizes); N = C/(6D)",
        d_coef=0.299, d_exp=0.537,
        notes="the IsoFLOP law is for training tokens; N follows from C = 6ND"),
)}


_POWER = re.compile(r"power\s*:(.*)", re.I)


def parse_power(spec: str) -> AllocationLaw:
    """``power:k=0.1,a=0.5`` (N_opt = k C^a; D = C/(6N)), optionally ``d=...,b=...`` for D_opt = d C^b."""
    m = _POWER.fullmatch(spec.strip())
    if not m:
        raise LawfitError(f"not a power law spec: {spec!r}; write power:k=K,a=A")
    vals: dict[str, float] = {}
    for part in m.group(1).split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise LawfitError(f"power law: cannot read {part.strip()!r} in {spec!r}; write power:k=K,a=A")
        k, v = (t.strip().lower() for t in part.split("=", 1))
        if k not in ("k", "a", "d", "b"):
            raise LawfitError(f"power law: unknown key {k!r} in {spec!r}; keys: k, a (N_opt = k*C^a), d, b (D_opt = d*C^b)")
        try:
            vals[k] = float(v)
        except ValueError:
            raise LawfitError(f"power law: {k}={v!r} is not a number") from None
    if ("k" in vals) != ("a" in vals) or ("d" in vals) != ("b" in vals) or not vals:
        raise LawfitError(f"power law {spec!r}: give k and a (N_opt = k*C^a), and/or d and b (D_opt = d*C^b)")
    return AllocationLaw(name=spec.strip(), citation="user-given power law", n_counts="as the user's k counts them",
                         n_coef=vals.get("k"), n_exp=vals.get("a"), d_coef=vals.get("d"), d_exp=vals.get("b"))


def get(name: Any) -> AllocationLaw | None:
    """The allocation law for a name or ``power:...`` spec, or None when ``name`` is not one."""
    if isinstance(name, AllocationLaw):
        return name
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key in LAWS:
        return LAWS[key]
    if key.startswith("power:"):
        return parse_power(name)
    return None


def from_isoflop(d: Any) -> AllocationLaw:
    """The allocation law of a saved IsoFLOP analysis (``flopscale fit --law isoflop --save``):
    ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` as fitted there."""
    try:
        n, dd = d["n_opt"], d["d_opt"]
        law = AllocationLaw(name="isoflop fit", citation="IsoFLOP analysis (Hoffmann et al. 2022, Approach 2) "
                            f"of {d.get('n_runs', '?')} runs", n_counts="as in the analysed data",
                            n_coef=float(n["coef"]), n_exp=float(n["exponent"]),
                            d_coef=float(dd["coef"]), d_exp=float(dd["exponent"]),
                            notes="; ".join(map(str, d.get("notes") or [])))
    except (KeyError, TypeError, ValueError) as exc:
        raise LawfitError(f"malformed IsoFLOP result: {type(exc).__name__}: {exc}") from None
    return law

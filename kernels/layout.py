"""Block-sparse layouts: which ``block x block`` tiles of a matrix are present.

A :class:`BlockLayout` describes the sparse side of a block-sparse product (or the
attended blocks of block-sparse attention).  It is pure torch/CPU bookkeeping: no
Triton here, so every kernel module can import it.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch

__all__ = ["BlockLayout", "SUPPORTED_BLOCKS"]

#: block sizes the kernels are compiled for (elements per block side)
SUPPORTED_BLOCKS = (16, 32, 64, 128)


def _check_block(block: Any) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block not in SUPPORTED_BLOCKS:
        raise ValueError(f"BlockLayout: block must be one of {SUPPORTED_BLOCKS}, got {block!r}")
    return int(block)


def _check_pos_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"BlockLayout: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class BlockLayout:
    """Which ``block x block`` tiles of an ``[H, rows*block, cols*block]`` matrix are non-zero.

    ``BlockLayout(mask, block)`` takes a 0/1 (or bool) mask of blocks, ``[H, rows, cols]``
    or ``[rows, cols]`` for one head, as a tensor, numpy array or nested list; ``block`` is the
    side of a block in elements, one of 16, 32, 64, 128.  The layout is immutable.

    Attributes (all cheap):

    * ``mask``     -- ``torch.bool [H, R, C]`` on the CPU (a private copy; do not modify)
    * ``block``    -- block side in elements
    * ``heads``, ``rows``, ``cols`` -- ``H``, ``R``, ``C`` (``rows``/``cols`` count *blocks*)
    * ``shape``    -- ``(H, R, C)``
    * ``nnz``      -- number of non-zero blocks over all heads
    * ``density``  -- ``nnz / (H * R * C)``
    * ``key``      -- a hashable identity (shape, block, digest of the mask); equal layouts
      have equal keys (also ``==`` and ``hash``)

    Block ids: the non-zero blocks are numbered ``0 .. nnz-1`` in the row-major order of
    ``mask.nonzero()`` over ``(head, block-row, block-col)``.  Compressed block-sparse
    tensors store block ``i`` at index ``i`` of their ``nnz`` dimension.

    Index structures (int32, built once per device and cached):

    * ``csr(device) -> (row_ptr [H*R+1], col_idx [nnz])``: the blocks of global row
      ``g = h*R + r`` are ids ``row_ptr[g] .. row_ptr[g+1]-1`` (CSR order *is* block-id order),
      their block-columns ``col_idx[...]``.
    * ``csc(device) -> (col_ptr [H*C+1], row_idx [nnz], block_id [nnz])``: the blocks of
      global column ``g = h*C + c`` are entries ``col_ptr[g] .. col_ptr[g+1]-1``, sorted by
      block-row, with block-rows ``row_idx[...]`` and block ids ``block_id[...]``.
    * ``coo(device) -> (head [nnz], row [nnz], col [nnz])`` for every block id.
    * ``row_counts()`` / ``col_counts()`` -- ``[H, R]`` / ``[H, C]`` int64 blocks per row/column.
    * ``memo(key, build)`` -- cache any derived structure on the layout (kernel lookup tables).

    ``transpose()`` returns the layout of the transposed matrix ``[H, C, R]`` (cached); its
    block ids are its own (row-major over the transposed mask), not those of ``self``.

    ``element_mask(M=None, N=None)`` expands to an element-level ``torch.bool [H, R*block,
    C*block]`` mask (cropped to ``M`` x ``N`` when given), handy for dense references.

    Builders (``H`` heads, ``R``/``C`` in blocks unless stated):
    ``dense(H, R, C, block)``, ``causal(H, R, block)``, ``local(H, R, window, block)``,
    ``strided(H, R, stride, block)``, ``fixed(H, R, stride, block, summary=1)`` (the
    Sparse Transformer patterns, Child et al. 2019), ``random(H, R, C, density, seed, block)``,
    ``from_mask_fn(fn, H, M, N, block)`` (from an element-level predicate).
    """

    __slots__ = ("_mask", "_block", "_key", "_cache", "_transpose", "_nnz")

    def __init__(self, mask: Any, block: int = 64) -> None:
        self._block = _check_block(block)
        if isinstance(mask, BlockLayout):
            mask = mask.mask
        if not isinstance(mask, torch.Tensor):
            try:
                mask = torch.as_tensor(mask)
            except Exception as exc:  # noqa: BLE001 - report what we got
                raise TypeError(f"BlockLayout: mask must be a tensor, array or nested list, got {type(mask).__name__}") from exc
        if mask.is_complex() or mask.is_floating_point() and not torch.isfinite(mask).all():
            raise ValueError("BlockLayout: mask must hold only 0 and 1")
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3:
            raise ValueError(f"BlockLayout: mask must be [H, rows, cols] or [rows, cols], got shape {tuple(mask.shape)}")
        if min(mask.shape) < 1:
            raise ValueError(f"BlockLayout: mask must have at least one head, row and column, got shape {tuple(mask.shape)}")
        mask = mask.detach().to("cpu")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("BlockLayout: mask must hold only 0 and 1 (or be torch.bool)")
            mask = mask != 0
        self._mask = mask.contiguous().clone()
        self._nnz = int(self._mask.sum())
        digest = hashlib.blake2b(self._mask.numpy().tobytes(), digest_size=16).hexdigest()
        self._key = (tuple(self._mask.shape), self._block, digest)
        self._cache: dict[Any, Any] = {}
        self._transpose: BlockLayout | None = None

    # ------------------------------------------------------------------ basics
    @property
    def mask(self) -> torch.Tensor:
        return self._mask

    @property
    def block(self) -> int:
        return self._block

    @property
    def heads(self) -> int:
        return self._mask.shape[0]

    @property
    def rows(self) -> int:
        return self._mask.shape[1]

    @property
    def cols(self) -> int:
        return self._mask.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._mask.shape)  # type: ignore[return-value]

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def density(self) -> float:
        return self._nnz / self._mask.numel()

    @property
    def key(self) -> tuple:
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockLayout) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return (
            f"BlockLayout(heads={self.heads}, rows={self.rows}, cols={self.cols}, block={self.block}, "
            f"nnz={self.nnz}, density={self.density:.3f})"
        )

    def __str__(self) -> str:
        """The repr plus a picture of head 0 ('#' present, '.' empty) when it is small."""
        text = repr(self)
        if self.rows <= 32 and self.cols <= 64:
            m = self._mask[0]
            lines = ["".join("#" if v else "." for v in row.tolist()) for row in m]
            more = f"  (head 0 of {self.heads})" if self.heads > 1 else ""
            text += more + "\n" + "\n".join("  " + ln for ln in lines)
        return text

    # ------------------------------------------------------------------ indices
    def _host_indices(self) -> dict[str, torch.Tensor]:
        cached = self._cache.get("host")
        if cached is not None:
            return cached
        H, R, C = self.shape
        nz = self._mask.nonzero()  # row-major over (h, r, c): this is block-id order
        h, r, c = nz[:, 0], nz[:, 1], nz[:, 2]
        grow = h * R + r
        row_counts = torch.bincount(grow, minlength=H * R)
        row_ptr = torch.zeros(H * R + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(row_counts, 0)
        # CSC: sort block ids by (h, c, r); ids are ascending in (h, r, c) so a stable
        # sort on the global column keeps rows ascending within a column
        gcol = h * C + c
        order = torch.sort(gcol, stable=True).indices
        col_counts = torch.bincount(gcol, minlength=H * C)
        col_ptr = torch.zeros(H * C + 1, dtype=torch.int64)
        col_ptr[1:] = torch.cumsum(col_counts, 0)
        out = {
            "row_ptr": row_ptr.to(torch.int32),
            "col_idx": c.to(torch.int32),
            "col_ptr": col_ptr.to(torch.int32),
            "row_idx": r[order].to(torch.int32),
            "block_id": order.to(torch.int32),
            "head": h.to(torch.int32),
            "row": r.to(torch.int32),
            "col": c.to(torch.int32),
            "row_counts": row_counts.reshape(H, R),
            "col_counts": col_counts.reshape(H, C),
        }
        self._cache["host"] = out
        return out

    def _on(self, device: Any) -> dict[str, torch.Tensor]:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        cached = self._cache.get(dev)
        if cached is None:
            host = self._host_indices()
            cached = {k: v.to(dev) for k, v in host.items() if k not in ("row_counts", "col_counts")}
            self._cache[dev] = cached
        return cached

    def csr(self, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(row_ptr int32 [H*R+1], col_idx int32 [nnz])`` on ``device`` (cached)."""
        d = self._on(device)
        return d["row_ptr"], d["col_idx"]

    def csc(self, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(col_ptr int32 [H*C+1], row_idx int32 [nnz], block_id int32 [nnz])`` on ``device`` (cached)."""
        d = self._on(device)
        return d["col_ptr"], d["row_idx"], d["block_id"]

    def coo(self, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(head, row, col)``, each int32 ``[nnz]``, for block ids ``0..nnz-1`` (cached)."""
        d = self._on(device)
        return d["head"], d["row"], d["col"]

    def memo(self, key: Any, build: Callable[["BlockLayout"], Any]) -> Any:
        """Derived data cached on the layout: ``build(self)`` on the first call for ``key``.

        For kernel modules that need their own index structures (e.g. a lookup table on a
        device): use a key naming the module and the device, e.g. ``("sdd_lut", 4, device)``.
        """
        k = ("memo", key)
        if k not in self._cache:
            self._cache[k] = build(self)
        return self._cache[k]

    def row_counts(self) -> torch.Tensor:
        """Non-zero blocks per block-row, int64 ``[H, R]`` (CPU)."""
        return self._host_indices()["row_counts"]

    def col_counts(self) -> torch.Tensor:
        """Non-zero blocks per block-column, int64 ``[H, C]`` (CPU)."""
        return self._host_indices()["col_counts"]

    def transpose(self) -> "BlockLayout":
        """Layout of the transposed matrix, ``[H, C, R]`` (built once, cached both ways)."""
        if self._transpose is None:
            t = BlockLayout(self._mask.transpose(1, 2), self._block)
            t._transpose = self
            self._transpose = t
        return self._transpose

    def element_mask(self, M: int | None = None, N: int | None = None) -> torch.Tensor:
        """Element-level ``torch.bool [H, M, N]`` (default ``M = R*block``, ``N = C*block``), CPU."""
        b = self._block
        full = self._mask.repeat_interleave(b, dim=1).repeat_interleave(b, dim=2)
        M = self.rows * b if M is None else M
        N = self.cols * b if N is None else N
        return full[:, :M, :N]

    # ------------------------------------------------------------------ builders
    @classmethod
    def dense(cls, H: int, R: int, C: int | None = None, block: int = 64) -> "BlockLayout":
        """All ``R x C`` blocks present (``C`` defaults to ``R``)."""
        C = R if C is None else C
        H, R, C = (_check_pos_int(n, v) for n, v in (("H", H), ("R", R), ("C", C)))
        return cls(torch.ones(H, R, C, dtype=torch.bool), block)

    @classmethod
    def causal(cls, H: int, R: int, block: int = 64) -> "BlockLayout":
        """Lower-triangular ``R x R`` blocks, diagonal included: block ``(i, j)`` iff ``j <= i``."""
        H, R = _check_pos_int("H", H), _check_pos_int("R", R)
        m = torch.ones(R, R, dtype=torch.bool).tril()
        return cls(m.expand(H, R, R), block)

    @classmethod
    def local(cls, H: int, R: int, window: int, block: int = 64, causal: bool = True) -> "BlockLayout":
        """Banded ``R x R``: block ``(i, j)`` iff ``0 <= i - j < window`` (``causal``, the default)
        or ``|i - j| < window`` (``causal=False``); ``window`` counts blocks, >= 1."""
        H, R = _check_pos_int("H", H), _check_pos_int("R", R)
        window = _check_pos_int("window", window)
        i = torch.arange(R)[:, None]
        j = torch.arange(R)[None, :]
        d = i - j
        m = (d >= 0) & (d < window) if causal else d.abs() < window
        return cls(m.expand(H, R, R), block)

    @classmethod
    def strided(cls, H: int, R: int, stride: int, block: int = 64, causal: bool = True) -> "BlockLayout":
        """Sparse Transformer *strided* pattern (Child et al. 2019, both heads merged), in blocks:
        block ``(i, j)`` iff ``|i - j| < stride`` (local) or ``(i - j) % stride == 0``
        (strided), restricted to ``j <= i`` when ``causal``."""
        H, R = _check_pos_int("H", H), _check_pos_int("R", R)
        stride = _check_pos_int("stride", stride)
        i = torch.arange(R)[:, None]
        j = torch.arange(R)[None, :]
        d = i - j
        m = (d.abs() < stride) | (d.remainder(stride) == 0)
        if causal:
            m &= d >= 0
        return cls(m.expand(H, R, R), block)

    @classmethod
    def fixed(
        cls, H: int, R: int, stride: int, block: int = 64, summary: int = 1, causal: bool = True
    ) -> "BlockLayout":
        """Sparse Transformer *fixed* pattern (Child et al. 2019, both heads merged), in blocks:
        block ``(i, j)`` iff ``i // stride == j // stride`` (same segment) or
        ``j % stride >= stride - summary`` (the last ``summary`` blocks of every segment act
        as summary columns), restricted to ``j <= i`` when ``causal``."""
        H, R = _check_pos_int("H", H), _check_pos_int("R", R)
        stride = _check_pos_int("stride", stride)
        summary = _check_pos_int("summary", summary)
        if summary > stride:
            raise ValueError(f"BlockLayout.fixed: summary ({summary}) must be <= stride ({stride})")
        i = torch.arange(R)[:, None]
        j = torch.arange(R)[None, :]
        m = ((i // stride) == (j // stride)) | ((j % stride) >= stride - summary)
        if causal:
            m &= j <= i
        return cls(m.expand(H, R, R), block)

    @classmethod
    def random(
        cls, H: int, R: int, C: int | None = None, density: float = 0.5, seed: int = 0, block: int = 64
    ) -> "BlockLayout":
        """``round(density * R * C)`` blocks per head chosen uniformly without replacement,
        reproducibly from ``seed`` (``C`` defaults to ``R``)."""
        C = R if C is None else C
        H, R, C = (_check_pos_int(n, v) for n, v in (("H", H), ("R", R), ("C", C)))
        if not (isinstance(density, (int, float)) and 0.0 <= float(density) <= 1.0):
            raise ValueError(f"BlockLayout.random: density must be in [0, 1], got {density!r}")
        g = torch.Generator().manual_seed(int(seed))
        k = int(round(float(density) * R * C))
        m = torch.zeros(H, R * C, dtype=torch.bool)
        for h in range(H):
            m[h, torch.randperm(R * C, generator=g)[:k]] = True
        return cls(m.reshape(H, R, C), block)

    @classmethod
    def from_mask_fn(
        cls, fn: Callable[..., Any], H: int, M: int, N: int | None = None, block: int = 64
    ) -> "BlockLayout":
        """From an element-level predicate ``fn(h, i, j) -> bool tensor``, called with
        broadcastable int64 index tensors (``h [H,1,1]``, ``i [1,M,1]``, ``j [1,1,N]``; one head
        at a time, so ``h`` is ``[1,1,1]``).  ``M``/``N`` are in *elements* (``N`` defaults to
        ``M``); a block is present iff ``fn`` is true for any element in it.  Rows/cols are
        ``ceil(M/block)``/``ceil(N/block)``; elements past ``M``/``N`` are never present."""
        block = _check_block(block)
        N = M if N is None else N
        H, M, N = (_check_pos_int(n, v) for n, v in (("H", H), ("M", M), ("N", N)))
        R, C = -(-M // block), -(-N // block)
        i = torch.arange(M)[None, :, None]
        j = torch.arange(N)[None, None, :]
        heads = []
        for h in range(H):
            val = fn(torch.full((1, 1, 1), h, dtype=torch.int64), i, j)
            val = torch.as_tensor(val)
            if val.dtype != torch.bool:
                raise TypeError(f"BlockLayout.from_mask_fn: fn must return a bool tensor, got {val.dtype}")
            val = torch.broadcast_to(val, (1, M, N))[0]
            padded = torch.zeros(R * block, C * block, dtype=torch.bool)
            padded[:M, :N] = val
            heads.append(padded.reshape(R, block, C, block).any(dim=3).any(dim=1))
        return cls(torch.stack(heads), block)

"""Column-selector adapters: cLA and its chained/random variants (Cadenhead et
al., "Beyond LoRA", arXiv 2606.13767) and PaCA (partial connection adaptation,
Woo et al. 2025).

cLA replaces LoRA's A by a fixed 0/1 selector of r input columns, so
``ΔW = s·B·A`` only touches those columns and ``ΔW x = s·B·x[cols]``: a gather,
not a matmul, and the adapter's saved activation is r columns of x instead of
A·x. Only B (out × r) is trained.

PaCA trains r columns of the weight itself. Its trainable tensor starts as
``W0[:, cols]`` (those columns are taken out of the frozen weight), so the
layer starts at the base layer. With the same columns and a learning-rate
independent optimiser such as Adam it follows the same trajectory as cLA with
s = 1 (only the offset of the trained tensor differs), which the tests check.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters.base import AdapterLinear, outer_gradients
from pinn_lora.model.adapters.lora import check_rank


def selector_rank(rank: int, base: nn.Linear) -> int:
    """Number of selected columns: ``rank`` clipped to the layer's input width
    (the output width does not limit a column selector: B is out × r)."""
    return min(check_rank(rank), base.in_features)


def window(index: int, rank: int, n: int) -> torch.Tensor:
    """Columns of window ``index``: r consecutive columns starting at index·r, wrapping mod n."""
    start = index * rank
    return torch.arange(start, start + rank) % n


def n_windows(rank: int, n: int) -> int:
    """Windows that cover all n columns once (the last may wrap around)."""
    return -(-n // rank)


class SelectorLinear(AdapterLinear):
    """``y = W0 x + b + s·B·x[cols]`` with a fixed column selector ``cols`` (a buffer)."""

    materialise = False  # the column gather x[cols] is what defines cLA: never a product with a dense A

    def __init__(self, base: nn.Linear, rank: int, scale: float, cols: torch.Tensor) -> None:
        super().__init__(base)
        self.rank = selector_rank(rank, base)
        cols = torch.as_tensor(cols, dtype=torch.long)
        if cols.shape != (self.rank,) or int(cols.min()) < 0 or int(cols.max()) >= self.in_features:
            raise ValueError(f"selector: need {self.rank} column indices in 0..{self.in_features - 1}, got {cols}")
        self.scale = float(scale)
        self.register_buffer("cols", cols.to(self.weight0.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, dtype=self.weight0.dtype,
                                               device=self.weight0.device))

    def selector(self) -> torch.Tensor:
        """The fixed A as a dense 0/1 matrix (r × in), for tests and inspection."""
        a = torch.zeros(self.rank, self.in_features, dtype=self.weight0.dtype, device=self.weight0.device)
        a[torch.arange(self.rank, device=a.device), self.cols] = 1.0
        return a

    def delta_weight(self) -> torch.Tensor:
        dw = torch.zeros_like(self.weight0)
        return dw.index_add(1, self.cols, self.scale * self.lora_B)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(x.index_select(-1, self.cols), self.lora_B)

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """∂rᵢ/∂B = s Σ_s δ[s,i] h[s,i][cols]ᵀ (the selector is A)."""
        return {"lora_B": outer_gradients(delta, h.index_select(-1, self.cols), None, None, self.scale)}

    @torch.no_grad()
    def move_to(self, cols: torch.Tensor) -> None:
        """c³LA's chain step: merge s·B into the frozen columns, select ``cols``, zero B.
        The layer's function is unchanged."""
        self.weight0 += self.delta_weight()
        self.cols.copy_(torch.as_tensor(cols, dtype=torch.long))
        self.lora_B.zero_()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, cols={self.cols.tolist()}, scale={self.scale:g}"


class PaCALinear(AdapterLinear):
    """``y = W0' x + b + P x[cols]``: the columns ``cols`` of W0 are the trainable ``P``
    (initialised to W0[:, cols]); W0' is W0 with those columns zeroed."""

    materialise = False  # a column gather, as the selectors

    def __init__(self, base: nn.Linear, rank: int, cols: torch.Tensor) -> None:
        super().__init__(base)
        self.rank = selector_rank(rank, base)
        cols = torch.as_tensor(cols, dtype=torch.long)
        if cols.shape != (self.rank,) or len(set(cols.tolist())) != self.rank:
            raise ValueError(f"paca: need {self.rank} distinct column indices, got {cols}")
        self.register_buffer("cols", cols.to(self.weight0.device))
        self.paca_weight = nn.Parameter(self.weight0[:, self.cols].clone())
        with torch.no_grad():
            self.weight0[:, self.cols] = 0.0

    def delta_weight(self) -> torch.Tensor:
        return torch.zeros_like(self.weight0).index_add(1, self.cols, self.paca_weight)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.cols), self.paca_weight)

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """∂rᵢ/∂P = Σ_s δ[s,i] h[s,i][cols]ᵀ."""
        return {"paca_weight": outer_gradients(delta, h.index_select(-1, self.cols), None, None)}

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, cols={self.cols.tolist()}"

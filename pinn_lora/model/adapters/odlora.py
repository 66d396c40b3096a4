"""OD-LoRA: LoRA whose factor gradients are pure projections of the full gradient.

ICLR 2026 submission 3878 ("OD-LoRA"); the same idea appears as SDS-LoRA,
arXiv 2606.16454. In plain LoRA (ΔW = s·B·A) the gradient of A is s·BᵀG and
that of B is s·G·Aᵀ, so every step is scaled by the *other* factor's singular
values; with ill-conditioned factors the update collapses onto the top
directions. OD-LoRA writes the update in two branches over fixed orthonormal
bases Q_A (n × r), Q_B (m × r)::

    ΔW = s·(Q_B·A + B·Q_Aᵀ)

so that g_A = s·Q_Bᵀ·G and g_B = s·G·Q_A, and one SGD step moves W by
−η s² (Q_B Q_Bᵀ G + G Q_A Q_Aᵀ): the singular values live in A and B but no
longer distort the step.

The layer has two modes:

* **warm-up** (``is_split`` false): plain LoRA, ΔW = s·B·A, B = 0 and A
  Kaiming-uniform as :class:`~pinn_lora.model.adapters.lora.LoRALinear`.
* **split** (after :meth:`ODLoRALinear.split`): the two-branch form above.
  :meth:`split` is function preserving: QR both factors (B = Q_B R_B,
  Aᵀ = Q_A R_A), SVD the r × r core s·R_B·R_Aᵀ = U Σ Vᵀ, rotate the bases
  (Q_B ← Q_B U, Q_A ← Q_A V) so that ΔW = Q_B Σ Q_Aᵀ, and give each branch
  half of it: A ← (Σ/2s)·Q_Aᵀ, B ← Q_B·(Σ/2s). Then
  s·(Q_B A + B Q_Aᵀ) = Q_B (Σ/2) Q_Aᵀ + Q_B (Σ/2) Q_Aᵀ = ΔW.

:meth:`ODLoRALinear.refresh` recomputes the bases from the current factors.
After the split, ΔW = s·[Q_B B]·[A; Q_Aᵀ] has rank up to 2r; the refresh takes
its SVD (from QR of the two thin factors and an SVD of the 2r × 2r core),
keeps the top r triplets as the new bases (column signs aligned with the old
bases) and re-splits them as above. The discarded tail (rank ≤ r) would change
W, so it is **folded into the frozen weight** ``weight0``: W = W0 + ΔW is kept
exact (to round-off) while ΔW itself becomes the rank-r truncation. ``weight0``
is therefore no longer the base layer's weight after a refresh (the merged
layer, :meth:`merged`, is unchanged).

All ops are plain matmuls on parameters and buffers, so residuals with second
derivatives differentiate through them; :meth:`delta` never builds ΔW.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora.model.adapters.base import AdapterLinear, factor_gradients
from pinn_lora.model.adapters.lora import kaiming_factors, layer_rank


def _orthonormal_basis(m: torch.Tensor, gen_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR ``m = Q R`` (Q with orthonormal columns). A zero ``m`` (e.g. B = 0
    before any training) has no column space: Q is then a random orthonormal basis
    (seeded) and R = 0, which still gives ``m = Q R`` exactly."""
    if not bool(m.any()):
        g = torch.Generator().manual_seed(gen_seed)
        q, _ = torch.linalg.qr(torch.randn(m.shape, generator=g, dtype=torch.float64).to(m))
        return q, torch.zeros(q.shape[1], m.shape[1], dtype=m.dtype, device=m.device)
    return torch.linalg.qr(m)


class ODLoRALinear(AdapterLinear):
    """OD-LoRA adapter (ICLR 2026 submission 3878; SDS-LoRA, arXiv 2606.16454).

    Trainable ``lora_A`` (r × in), ``lora_B`` (out × r); buffers ``Q_A`` (in × r),
    ``Q_B`` (out × r) with orthonormal columns (zero until the split) and the
    mode flag ``is_split``. ``rank`` is clipped to min(out, in) by
    :func:`layer_rank`; the scale is α / (configured rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(base)
        self.rank = layer_rank(rank, base)
        self.scale = float(alpha) / int(rank)
        like = {"dtype": self.weight0.dtype, "device": self.weight0.device}
        b, a = kaiming_factors(self.rank, self.in_features, self.out_features, generator)  # LoRA's start
        self.lora_A = nn.Parameter(a.to(**like))
        self.lora_B = nn.Parameter(b.to(**like))
        self.register_buffer("Q_A", torch.zeros(self.in_features, self.rank, **like))
        self.register_buffer("Q_B", torch.zeros(self.out_features, self.rank, **like))
        self.register_buffer("is_split", torch.zeros((), dtype=torch.bool, device=self.weight0.device))
        # seed of the random basis used where a factor is exactly zero (see _orthonormal_basis)
        self._basis_seed = int(torch.randint(2**62, (1,), generator=generator))

    @property
    def split_done(self) -> bool:
        return bool(self.is_split)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_B, self.lora_A

    def _finite(self) -> bool:
        """False after a step that blew up: split and refresh then leave the layer alone (their QR/SVD
        would raise on non-finite factors); the training loop's divergence check rolls the step back."""
        return bool(torch.isfinite(self.lora_A).all() and torch.isfinite(self.lora_B).all())

    # -- ΔW -------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """s(Q_B·A + B·Q_Aᵀ) after the split, s·B·A before it, without reading the mode flag on the host (so
        the step can be captured in a CUDA graph): before the split Q_A = Q_B = 0 and the LoRA term has weight 1,
        after it weight 0; each form is then computed exactly (adding zeros)."""
        lora = (~self.is_split).to(self.lora_B.dtype) * (self.lora_B @ self.lora_A)
        return self.scale * (self.Q_B @ self.lora_A + self.lora_B @ self.Q_A.T + lora)

    def point_gradients(self, delta: torch.Tensor, h: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
        """Before the split (ΔW = s·B·A) as LoRA's; after it (ΔW = s(Q_B·A + B·Q_Aᵀ)):
        ∂rᵢ/∂A = s Σ_s (Q_Bᵀ δ[s,i]) h[s,i]ᵀ, ∂rᵢ/∂B = s Σ_s δ[s,i] (Q_Aᵀ h[s,i])ᵀ."""
        left, right = (self.Q_B, self.Q_A.T) if self.split_done else (self.lora_B.detach(), self.lora_A.detach())
        return factor_gradients(delta, h, names, left, right, self.scale)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_done:
            # s·[Q_B B]·[A; Q_Aᵀ] x: one (2r × in) and one (out × 2r) product, no out × in matrix
            left = torch.cat([self.Q_B, self.lora_B], dim=1)
            right = torch.cat([self.lora_A, self.Q_A.T], dim=0)
            return self.scale * F.linear(F.linear(x, right), left)
        return self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    # -- basis changes (both keep W0 + ΔW exact) --------------------------------------
    def _set_split(self, q_b: torch.Tensor, sigma: torch.Tensor, q_a: torch.Tensor) -> None:
        """ΔW = Q_B diag(σ) Q_Aᵀ as two equal branches: A = (σ/2s) Q_Aᵀ, B = Q_B (σ/2s)."""
        half = sigma / (2 * self.scale)
        self.Q_A.copy_(q_a)
        self.Q_B.copy_(q_b)
        self.lora_A.copy_(half[:, None] * q_a.T)
        self.lora_B.copy_(q_b * half[None, :])
        self.is_split.fill_(True)

    @torch.no_grad()
    def split(self) -> None:
        """Switch from LoRA to the two-branch form with ΔW unchanged (see module doc).
        A factor that is exactly zero (B at initialisation) gets a random orthonormal basis."""
        if self.split_done:
            raise RuntimeError("ODLoRALinear.split: already split (use refresh)")
        if not self._finite():
            return
        q_b, r_b = _orthonormal_basis(self.lora_B.detach(), self._basis_seed)            # B = Q_B R_B
        q_a, r_a = _orthonormal_basis(self.lora_A.detach().T, self._basis_seed + 1)      # Aᵀ = Q_A R_A
        u, sigma, vh = torch.linalg.svd(self.scale * r_b @ r_a.T)                       # r × r core
        self._set_split(q_b @ u, sigma, q_a @ vh.T)

    @torch.no_grad()
    def refresh(self) -> None:
        """New bases from the current factors: top-r SVD of ΔW, column signs aligned with
        the old bases, re-split; the truncated tail is folded into ``weight0`` (W exact)."""
        if not self.split_done:
            raise RuntimeError("ODLoRALinear.refresh: split first")
        if not self._finite():
            return
        left = torch.cat([self.Q_B, self.lora_B], dim=1)           # out × 2r
        right = torch.cat([self.lora_A.T, self.Q_A], dim=1)        # in × 2r
        delta = self.scale * left @ right.T
        q_l, r_l = torch.linalg.qr(left)
        q_r, r_r = torch.linalg.qr(right)
        u, sigma, vh = torch.linalg.svd(self.scale * r_l @ r_r.T, full_matrices=False)
        r = self.rank
        q_b, q_a, sigma = q_l @ u[:, :r], q_r @ vh[:r].T, sigma[:r]
        # flip a pair (u_i, v_i) together (ΔW unchanged) to agree with the old basis vectors
        agree = (q_b * self.Q_B).sum(0) + (q_a * self.Q_A).sum(0)
        sign = torch.where(agree < 0, -1.0, 1.0).to(q_b)
        q_b, q_a = q_b * sign, q_a * sign
        self.weight0 += delta - (q_b * sigma) @ q_a.T             # keep W0 + ΔW exact
        self._set_split(q_b, sigma, q_a)

    def extra_repr(self) -> str:
        mode = "split" if self.split_done else "lora"
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, mode={mode}"

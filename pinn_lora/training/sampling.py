"""The collocation points of each step: uniform draws from the problem's sampler, RAD or RAR-D
(residual-based adaptive distribution / refinement, Wu et al. 2023). A :class:`Sampler` owns its
generator and its point state (the last points drawn, a checkpoint's points for a resume mid-block)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pinn_lora.model import jacobian
from pinn_lora.training.config import TrainConfig
from pinn_lora.training.continuation import Continuation


class Sampler:
    """Draws the points of each step: new ones every ``resample_every`` steps from the start of the
    current continuation stage (and at each stage's start), from the stage's problem; the generator is
    seeded by ``cfg.seed``. ``sampling``: ``uniform`` (the problem's ``sampler``), ``rad`` (a fresh draw
    ∝ the residual) or ``rar_d`` (the set grows by such a draw)."""

    def __init__(self, cfg: TrainConfig, continuation: Continuation, model: nn.Module, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.cfg, self.continuation, self.model, self.dtype, self.device = cfg, continuation, model, dtype, device
        self.rng = np.random.default_rng(cfg.seed)
        self.draw_state: dict[str, Any] | None = None  # the generator's state before the last draw of points
        self.current: torch.Tensor | None = None  # the last points drawn
        self.restored: torch.Tensor | None = None  # a checkpoint's points, for a resume mid-block

    def block_position(self, step: int) -> int:
        """Steps since the last draw of points: every ``resample_every`` steps from the stage's start."""
        return (step - self.continuation.start) % self.cfg.resample_every

    def points(self, n: int) -> torch.Tensor:
        """A new draw of ``n`` points (RAR-D after its first draw: the set so far and ``rar_points`` more)."""
        self.draw_state = self.rng.bit_generator.state
        seed = int(self.rng.integers(2**31 - 1))
        cfg = self.cfg
        if cfg.sampling == "rad":
            pts = self._rad_points(n, seed)
        elif cfg.sampling == "rar_d" and self.current is not None:
            pts = torch.cat([self.current, self._rad_points(cfg.rar_points, seed)])
        else:
            pts = torch.as_tensor(self.continuation.physics.sample(n, seed=seed, sampler=cfg.sampler),
                                  dtype=self.dtype, device=self.device)
        self.current = pts
        return pts

    def batch(self, step: int, current: torch.Tensor | None) -> torch.Tensor:
        """The points of ``step``: new ones every ``resample_every`` steps (and when a stage starts), else
        ``current`` (after a resume mid-block, the checkpoint's; with uniform sampling they are drawn
        again instead)."""
        mid = 0 if self.continuation.advance(step) else self.block_position(step)
        if current is not None and mid:
            return current
        if current is None and mid and self.restored is not None:
            current, self.restored = self.restored, None
            self.current = current
            return current
        return self.points(self.cfg.n_points)

    def _rad_points(self, n: int, seed: int) -> torch.Tensor:
        """RAD (Wu et al. 2023): ``n`` of ``rad_pool``·n candidates, drawn without replacement with
        probability ∝ |r|^k / mean(|r|^k) + c (|r|: the model's residual, summed over terms). RAR-D
        adds such a draw to the points it has (the first draw: ``n_points`` from the sampler)."""
        cfg, physics = self.cfg, self.continuation.physics
        pool = torch.as_tensor(physics.sample(n * cfg.rad_pool, seed=seed, sampler=cfg.sampler),
                               dtype=self.dtype, device=self.device)
        r = jacobian.residual_vector(physics, self.model, pool).reshape(-1, pool.shape[0]).abs().sum(0)
        dens = r ** cfg.rad_k
        dens = (dens / dens.mean().clamp_min(1e-300) + cfg.rad_c).double().cpu().numpy()
        if not np.all(np.isfinite(dens)) or dens.sum() <= 0:
            dens = np.ones_like(dens)
        idx = np.random.default_rng(seed).choice(pool.shape[0], size=n, replace=False, p=dens / dens.sum())
        return pool[torch.as_tensor(np.sort(idx), device=self.device)]

    # -- checkpoints
    def state(self, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        """The generator (``rng``: its state before the step's own draw, when that draw has already
        happened), its state before the last draw and, for residual-adaptive points, the points: they
        depend on the model that drew them, so a resume mid-block takes them as they were (RAR-D's set
        grows with every draw: it is always stored)."""
        return {"rng": rng if rng is not None else self.rng.bit_generator.state, "draw_rng": self.draw_state,
                "points": self.current if self.cfg.sampling in ("rad", "rar_d") else None}

    def restore(self, state: dict[str, Any], step: int, phase: str) -> None:
        """Continue at ``step`` of ``phase`` from a checkpoint's :meth:`state` (the continuation restored
        first): mid-block, the generator is rewound to the draw of the block's points, so the loop draws
        the same points again, or (residual-adaptive) the checkpoint's points are taken as they were."""
        redraw = (phase == "train" and self.block_position(step) and not self.continuation.done(step)
                  and state["draw_rng"] is not None)
        if self.cfg.sampling == "rar_d" and state.get("points") is not None:  # the set the next draw adds to
            self.current = state["points"].to(dtype=self.dtype, device=self.device)
        if redraw and state.get("points") is not None:
            self.restored = state["points"].to(dtype=self.dtype, device=self.device)
            redraw = False
        self.rng.bit_generator.state = state["draw_rng"] if redraw else state["rng"]

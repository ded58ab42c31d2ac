"""AdamW and gradient clipping over a model's trainable tensors, fused in C++.

``AdamW`` follows ``torch.optim.AdamW`` (decoupled weight decay, bias correction, no amsgrad)
step for step; ``clip_grad_norm`` follows ``torch.nn.utils.clip_grad_norm_``.
"""

from __future__ import annotations

from . import _core

__all__ = ["AdamW", "clip_grad_norm"]


class AdamW:
    """``opt = AdamW(model.trainable_parameters(), lr=2e-4, weight_decay=0.0)``; ``opt.step()``.

    ``state_dict()`` / ``load_state_dict()`` give the moments and the step count (copies) for
    checkpoints; loading validates names and shapes and changes nothing on error.
    """

    def __init__(self, params: "_core.ParameterList", lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if not isinstance(params, _core.ParameterList):
            raise TypeError("AdamW expects model.trainable_parameters() (an ecomllm ParameterList)")
        self._opt = _core.AdamW(params, lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                                weight_decay=float(weight_decay))

    def step(self) -> None:
        self._opt.step()

    @property
    def lr(self) -> float:
        return self._opt.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._opt.lr = float(value)

    @property
    def step_count(self) -> int:
        return self._opt.step_count

    @property
    def params(self) -> "_core.ParameterList":
        return self._opt.params

    def state_dict(self) -> dict:
        return self._opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._opt.load_state_dict(state)


def clip_grad_norm(params: "_core.ParameterList", max_norm: float) -> float:
    """Scales all gradients so that their global L2 norm is at most ``max_norm``; returns the
    norm before clipping."""
    return _core.clip_grad_norm(params, float(max_norm))

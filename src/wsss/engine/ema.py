"""Mean teacher: a network kept as an exponential moving average of another (the authors' SupportNet, issue 16).

After every optimiser step of the student (MainNet)::

    theta_teacher <- m * theta_teacher + (1 - m) * theta_student       (m = 0.996 in the authors' compiled code)

for every parameter and every floating-point buffer (BatchNorm running statistics: our choice; the teacher runs in
evaluation mode, so its statistics are those of the averaged network); integer buffers (BatchNorm's batch counter)
are copied. Tarvainen & Valpola (NeurIPS 2017) introduced the mean teacher.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """``teacher`` <- ``momentum`` * ``teacher`` + (1 - ``momentum``) * ``student``, in place (same architecture)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"the EMA momentum must lie in [0, 1], got {momentum}")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    if t_state.keys() != s_state.keys():
        missing = sorted(set(t_state) ^ set(s_state))[:3]
        raise ValueError(f"teacher and student differ in their parameters (e.g. {missing})")
    for k, t in t_state.items():
        s = s_state[k].detach().to(t.device)
        if t.is_floating_point():
            t.mul_(momentum).add_(s.to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)

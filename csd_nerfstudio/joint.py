"""The joint schedule (``--pipeline.schedule joint``): every chosen view edited together by CSD, then a short fit.

When editing starts, every training view (or ``--pipeline.joint.views K`` of them, spread over the cameras) is
edited from its photo in one CSD-Edit run (this first round renders nothing): N is all of them and the kernel
spans all of them, while the UNet works through them in ``edit.max_batch`` chunks, so its memory does not grow
with N. The edits are written back, reaching the training images over ``joint.ramp`` of the fit steps
(:class:`TargetRamp`), and the scene trains on them for ``joint.fit-steps`` steps. Each later round
(``joint.rounds``; one round by default) renders the views and starts from the renders (through
``joint.carry``) at a lower ``t_max``, as DGE (Chen et al. 2024) re-edits its views with less noise each round. The fast peers (GaussCtrl, DGE) share this shape: edit many views once, then
fit for 1,000–1,500 steps; CSD's kernel makes the many views one joint edit.

This module holds the schedule's settings, which views a round edits, each round's timestep range and start, the
ramp of its edits into the training images and the progress a round reports; :class:`csd_nerfstudio.pipeline.CSDPipeline` runs the rounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["JointConfig", "spread_views", "round_plan", "round_due", "JointProgress", "RoundStopped", "TargetRamp"]


class RoundStopped(Exception):
    """A joint round given up because the run was asked to stop (Ctrl-C): nothing of it is written back, and a
    resumed run makes it again."""


@dataclass
class JointConfig:
    """The joint schedule's settings (``--pipeline.joint.*``; used with ``--pipeline.schedule joint``)."""

    views: Optional[int] = None
    """Views edited together in each round; None: every training view. Fewer are spread over the cameras
    (:func:`spread_views`)."""
    rounds: int = 1
    """Joint edits. The first starts from the photos; each later one from the scene's renders (``carry``) at a
    lower ``t_max``. Our measurement (face at 64 px, 30 views, csd-edit-tiny-fast with the ramp, 200 fit steps in
    all, lr 0.1, from one base, one thread; seeds 0–1 for one round, 0–2 for two): one round's renders had edit
    inconsistency 0.0118 (recolor it, 114°) and 0.0101 (make it night, 0.88), two rounds at 0.0123 (118°)
    and 0.0147 (0.88), with structure 25.5 against 24.6 dB and 30.3 against 29.8 dB; the kernel's own edits
    spread 0.65× those with the kernel off after one round (0.0155 against 0.0238) and 1.03–1.04× after two (the
    second round starts from renders that already agree); and the whole edit took 24.5 s against 35.0 s
    (0.20× and 0.29× the iterative csd-edit-tiny's 121 s, two threads). Two rounds fit their own edits better
    (28.6 against 25.0 dB): a later round starts from what the scene can already show."""
    fit_steps: int = 1500
    """Training steps after each round, on the edited views. The peers fit 1,000–1,500 steps after their edit
    (GaussCtrl, DGE); csd-edit-tiny measures its own."""
    last_t_max: Optional[int] = None
    """``t_max`` of the last round; the rounds between go linearly from ``edit.t_max`` to it. None: half of
    ``edit.t_max`` (DGE lowers the noise of each later round; our choice of how far)."""
    carry: float = 1.0
    """Start of each later round: ``z_photo + carry·(z_render − z_photo)``. 1 starts from the render, the scene's
    agreed edit, which the round refines at less noise (DGE's rounds start from the renders)."""
    ramp: float = 0.5
    """Share of each round's fit steps over which the training images move, linearly, from what they were to the
    round's edits; 0 writes the edits at once. A joint round changes every view at once, and nerfacto's Adam (lr
    1e-2) then moves every colour weight the same way: the colour head overshoots into the sigmoid's flat tail and
    stays there (its second moments hold the surge). Our measurement (face at 64 px, 30 views, csd-edit-tiny-fast,
    'make it night', seed 0): with 0 the scene rendered exactly black within 10 steps though its edited views kept
    the face (every joint arm, 3 seeds, lr 0.1); with 0.5 it kept the face (night strength 0.90, structure 30.2 dB,
    fit 31.6 dB), and 'recolor it' gave edit inconsistency 0.0116 at 119° against 0.0126 at 122° with 0. Clearing
    Adam's state with a 50-step lr warm-up instead also kept the face, at 0.0217 against the ramp's 0.0135."""
    max_batch: int = 24
    """UNet rows per call in a round when ``edit.max_batch`` is None (each view takes 6 rows: three-way guidance
    of the target and of the source), so that a round's memory does not grow with its views. Our measurement:
    393 MiB per 6 rows in fp16 on an H200 (benchmarks/RESULTS.md), so 24 rows are about 1.6 GiB above the
    weights; ``edit.max_batch`` overrides it."""

    def __post_init__(self) -> None:
        if self.views is not None and not (isinstance(self.views, int) and self.views >= 1):
            raise ValueError(f"--pipeline.joint.views: expected a positive integer or None (every view), got "
                             f"{self.views!r}")
        for name in ("rounds", "fit_steps", "max_batch"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"--pipeline.joint.{name.replace('_', '-')}: expected a positive integer, "
                                 f"got {value!r}")
        if self.last_t_max is not None and not (isinstance(self.last_t_max, int) and self.last_t_max >= 0):
            raise ValueError(f"--pipeline.joint.last-t-max: expected a non-negative integer or None, got "
                             f"{self.last_t_max!r}")
        for name in ("carry", "ramp"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
                raise ValueError(f"--pipeline.joint.{name}: expected a number in [0, 1], got {value!r}")

    @property
    def edit_steps(self) -> int:
        """Training steps from the first round to the end of the last fit: ``rounds × fit_steps``."""
        return self.rounds * self.fit_steps

    @property
    def ramp_steps(self) -> int:
        """Training steps of each round's ramp (:class:`TargetRamp`): ``ramp × fit_steps``, rounded; 1 or less
        writes the edits at once."""
        return int(round(self.ramp * self.fit_steps))


def spread_views(c2w: Tensor, k: Optional[int]) -> List[int]:
    """``k`` training views spread over the cameras (all of them when ``k`` is None or at least their number), in
    training order. Farthest-point sampling from view 0 on the distance of
    :func:`csd_nerfstudio.views.neighbouring_views` (centre distance over its median plus ``1 − cos`` of the
    viewing directions): each pick is the view least like those picked so far. Deterministic."""
    n = c2w.shape[0]
    if k is None or k >= n:
        return list(range(n))
    centres = c2w[:, :3, 3].float()
    dirs = F.normalize(-c2w[:, :3, 2].float(), dim=-1)
    dist = torch.cdist(centres, centres)
    scale = dist[dist > 0].median() if (dist > 0).any() else torch.tensor(1.0)
    score = dist / scale + (1 - dirs @ dirs.T)
    picked = [0]
    nearest = score[0].clone()
    for _ in range(k - 1):
        nearest[picked] = -1.0
        nxt = int(nearest.argmax())
        picked.append(nxt)
        nearest = torch.minimum(nearest, score[nxt])
    return sorted(picked)


def round_plan(joint: JointConfig, t_min: int, t_max: int, round_index: int) -> Tuple[int, float]:
    """Round ``round_index``'s (0-based) ``t_max`` and start share ``carry``: the first round edits the photos
    (carry 0) up to ``t_max``; later rounds start from the renders (``joint.carry``) and their ``t_max`` falls
    linearly to ``joint.last_t_max`` (never below ``t_min``)."""
    last = t_max // 2 if joint.last_t_max is None else joint.last_t_max
    last = max(t_min, min(last, t_max))
    if joint.rounds == 1 or round_index == 0:
        return t_max, 0.0
    frac = round_index / (joint.rounds - 1)
    return int(round(t_max + frac * (last - t_max))), float(joint.carry)


def round_due(joint: JointConfig, step: int, edit_start: int, rounds_done: int, last_round_step: Optional[int]) -> bool:
    """Whether a joint round runs at ``step``: the first at ``edit_start`` (or the first step after it), each next
    one ``fit_steps`` after the last, until ``rounds`` are done."""
    if step < edit_start or rounds_done >= joint.rounds:  # the pipeline checks the pretraining too
        return False
    if rounds_done == 0 or last_round_step is None:
        return True
    return step >= last_round_step + joint.fit_steps


def _clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class JointProgress:
    """What a joint round reports while it runs: "rendering views k/K" (or, in the first round, which edits the
    photos, "starts from the photos"), then "editing views 1–K/K together, CSD step s/S", each with an ETA of the
    round, on the console (a line at each tenth of each phase) and through
    ``show`` (the viewer's status line, at every view and step).

    nerfstudio's own ETA counts training steps and knows nothing of a round that holds one step for minutes (IN2N
    #75's users were misled by it), so the round keeps its own clock. The ETA adds the renders left at the
    measured seconds per render and the CSD steps left at the measured seconds per step; before the first step
    of the first round that rate is unknown, so the ETA covers the renders and says that the steps follow
    ("renders ETA 0:21, then 20 CSD steps"; later rounds reuse the last round's rate)."""

    step_seconds: Optional[float] = None
    """Seconds per CSD step of the last round that ran one (in this process), for the next round's first ETA."""

    def __init__(self, round_index: int, rounds: int, views: int, steps: int,
                 say: Callable[[str], None], show: Callable[[str], None] = lambda text: None,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.round, self.rounds, self.views, self.steps = round_index, rounds, views, steps
        self.say, self.show, self.should_stop = say, show, should_stop
        self.render_seconds: Optional[float] = None
        """Wall seconds of the round's renders (set after the last one)."""
        self.edit_seconds: Optional[float] = None
        """Wall seconds of the joint edit after the renders: the CSD steps, the VAE and the write-back."""
        self.start = time.perf_counter()
        self._edit_start: Optional[float] = None
        self._said = (None, -1)
        self.lines: List[str] = []

    def _report(self, phase: str, what: str, fraction: float, eta: Optional[float],
                eta_text: Optional[str] = None) -> None:
        elapsed = time.perf_counter() - self.start
        if eta_text is None:
            eta_text = "ETA ?" if eta is None else f"ETA {_clock(eta)}"
        text = f"joint round {self.round + 1}/{self.rounds}: {what}, {eta_text} (elapsed {_clock(elapsed)})"
        self.show(text)
        tenth = int(10 * fraction)
        if (phase, tenth) != self._said and (phase != self._said[0] or tenth > self._said[1]):
            self._said = (phase, tenth)
            self.lines.append(text)
            self.say(f"csd-edit: {text}")

    def _check(self) -> None:
        if self.should_stop():
            raise RoundStopped(f"joint round {self.round + 1}/{self.rounds} stopped")

    def rendered(self, k: int) -> None:
        """View ``k`` (1-based) of the round has been rendered; raises :class:`RoundStopped` when asked to stop."""
        per_render = (time.perf_counter() - self.start) / k
        rate = type(self).step_seconds
        eta = None if rate is None else (self.views - k) * per_render + self.steps * rate
        eta_text = None if rate is not None else (f"renders ETA {_clock((self.views - k) * per_render)}, then "
                                                  f"{self.steps} CSD steps")  # no step timed yet in this process
        self._report("render", f"rendering views {k}/{self.views}", k / self.views, eta, eta_text)
        if k == self.views:
            self._edit_start = time.perf_counter()
            self.render_seconds = self._edit_start - self.start
        self._check()

    def from_photos(self) -> None:
        """The round starts from the photos and renders nothing (the first round): its render time is 0."""
        self._edit_start = time.perf_counter()
        self.render_seconds = self._edit_start - self.start
        self._report("render", f"starts from the photos ({self.views} views, nothing to render)", 1.0,
                     None if type(self).step_seconds is None else self.steps * type(self).step_seconds)
        self._check()

    def stepped(self, step: int) -> None:
        """CSD step ``step`` (0-based) has updated every view; raises :class:`RoundStopped` when asked to stop."""
        if self._edit_start is None:
            self._edit_start = self.start
        rate = (time.perf_counter() - self._edit_start) / (step + 1)
        type(self).step_seconds = rate
        self._report("edit", f"editing views 1–{self.views}/{self.views} together, CSD step {step + 1}/{self.steps}",
                     (step + 1) / self.steps, (self.steps - step - 1) * rate)
        self._check()

    def finished(self) -> float:
        """The round is written back; returns its wall seconds."""
        seconds = time.perf_counter() - self.start
        self.edit_seconds = seconds - (self.render_seconds or 0.0)
        text = (f"joint round {self.round + 1}/{self.rounds}: {self.views} views edited together in "
                f"{seconds:.1f} s")
        self.show(text)
        self.lines.append(text)
        self.say(f"csd-edit: {text}")
        return seconds


class TargetRamp:
    """A round's edits reaching the training images over ``steps`` training steps (``--pipeline.joint.ramp``).

    At step ``start + k`` (k = 0 … steps − 1) view ``i`` trains on ``before_i + (k + 1)/steps · (after_i −
    before_i)``, rounded to 8 bits as every training image is (:meth:`csd_nerfstudio.data.TrainImages.set`):
    ``before`` is what the view trained on until the round, ``after`` the round's edit. Both are kept as uint8
    ``[H, W, 3]``; a checkpoint taken during the ramp stores ``after`` as the view (the edit, which
    ``OUTPUT/edited/`` shows too) and ``before`` beside it, so a resumed run goes on with the same blend."""

    def __init__(self, start: int, steps: int, indices: List[int], before: List[Tensor], after: List[Tensor]):
        if steps < 1:
            raise ValueError(f"steps: expected a positive integer, got {steps!r}")
        self.start, self.steps, self.indices = int(start), int(steps), [int(i) for i in indices]
        self.before, self.after = list(before), list(after)

    def share(self, step: int) -> float:
        """How far step ``step`` is along the ramp: ``(step − start + 1) / steps``, within [0, 1]."""
        return min(1.0, max(0.0, (step - self.start + 1) / self.steps))

    def apply(self, images, step: int) -> bool:
        """Write step ``step``'s blend into ``images`` (a TrainImages); True once the edits are reached."""
        share = self.share(step)
        for i, before, after in zip(self.indices, self.before, self.after):
            images.set(i, torch.lerp(before.float(), after.float(), share) / 255.0)
        return share >= 1.0

    def meta(self) -> dict:
        """The ramp's place, for a checkpoint's metadata (its images are stored beside it)."""
        return {"start": self.start, "steps": self.steps, "views": self.indices}

"""nerfstudio's Trainer for csd-edit: checks before anything loads, atomic checkpoints, Ctrl-C that saves.

- :class:`CSDTrainerConfig` runs :func:`csd_nerfstudio.checks.check_run` when ns-train saves ``config.yml``,
  the first thing its ``main`` writes, so a bad scene, output folder or checkpoint gets one line and exit 2.
- :class:`CSDTrainer` writes each checkpoint to a temporary file and renames it into ``nerfstudio_models``, so a
  kill mid-save never leaves a half checkpoint that ``--load-dir`` would pick. The pipeline's ``state_dict``
  holds the edited views, the update counter and the RNG state (:meth:`CSDPipeline.edit_state`).
- Ctrl-C or SIGTERM while training: the step in flight (and its update) finishes, a checkpoint with the edits
  and ``OUTPUT/edited/`` are written, one line says where, and ns-train exits 130 (143 for SIGTERM). A second
  signal quits at once. nerfstudio's ``launch`` would catch a KeyboardInterrupt, print its traceback and exit 0,
  so the signal never becomes one while a run trains. Before training (loading the scene and the diffusion
  model, nothing written but ``config.yml``) a signal ends the run at once with the same codes.
- At the end of training ``OUTPUT/edited/`` is written too (:func:`csd_nerfstudio.edited.write_edited`).

Errors of our own (:class:`SceneError`, csd2d's ``ModelLoadError`` and ``ConfigError``) print as one line when
the run came from ns-train (its ``main`` calls ``save_config``); callers that set the trainer up in their own
process (``csd_nerfstudio.evaluate``, the benchmarks) get the exception, and Ctrl-C there raises
KeyboardInterrupt after the same save.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Type

from nerfstudio.engine.trainer import Trainer, TrainerConfig

from csd2d.config import ConfigError
from csd2d.guidance import ModelLoadError

from .checks import SceneError, check_run

__all__ = ["CSDTrainerConfig", "CSDTrainer", "one_line_errors"]

OUR_ERRORS = (SceneError, ModelLoadError, ConfigError)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def from_ns_train(config: TrainerConfig) -> bool:
    """Whether ``config`` is being run by ns-train's ``main`` (which calls ``save_config`` before ``launch``)."""
    return bool(config.__dict__.get("_from_ns_train", False))


@contextlib.contextmanager
def one_line_errors(prog: str, enabled: bool = True) -> Iterator[None]:
    """When ``enabled``, an error of our own becomes ``PROG: error: MESSAGE`` on stderr and exit 2."""
    try:
        yield
    except OUR_ERRORS as err:
        if not enabled:
            raise
        _say(f"{prog}: error: {err}")
        raise SystemExit(2) from None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class CSDTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, building :class:`CSDTrainer` and checking the run before ``config.yml``."""

    _target: Type = field(default_factory=lambda: CSDTrainer)

    def prog(self) -> str:
        return f"ns-train {self.method_name}"

    def save_config(self) -> None:
        """Check the scene, the output folder and the checkpoint to load, then write ``config.yml``."""
        with one_line_errors(self.prog()):
            check_run(self)
        super().save_config()
        self.__dict__["_from_ns_train"] = True  # after config.yml is written: not a setting, never saved


class CSDTrainer(Trainer):
    """Trainer with atomic checkpoints, edits kept, and signals that save (see the module docstring)."""

    config: CSDTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        super().__init__(config, local_rank, world_size)
        self.stop_signal: Optional[int] = None
        """The signal (SIGINT, SIGTERM) that asked training to stop; None while it runs on."""
        self._saved_handlers = {}

    def prog(self) -> str:
        return f"ns-train {self.config.method_name}"

    # --------------------------------------------------------------------------------------------- signals
    def _install(self, handler) -> None:
        if not _main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, handler)
            self._saved_handlers.setdefault(sig, previous)

    def _restore(self) -> None:
        if not _main_thread():
            return
        for sig, previous in self._saved_handlers.items():
            signal.signal(sig, previous)
        self._saved_handlers = {}

    def _quit_now(self, signum, _frame) -> None:
        _say(f"{self.prog()}: interrupted before training started; nothing saved")
        os._exit(128 + signum)

    def _ask_stop(self, signum, _frame) -> None:
        if self.stop_signal is not None:
            _say(f"{self.prog()}: interrupted again; quitting now without saving")
            os._exit(128 + signum)
        self.stop_signal = signum
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.stop_requested = True  # a joint round gives up instead of running on for minutes
        _say(f"{self.prog()}: stopping after this step; saving a checkpoint and the edited views "
             f"(again to quit at once)")
        if self.training_state == "paused":  # nerfstudio's loop only sleeps while paused
            self.training_state = "training"

    # --------------------------------------------------------------------------------------------- phases
    def setup(self, test_mode: str = "val") -> None:
        if from_ns_train(self.config):
            self._install(self._quit_now)
        try:
            with one_line_errors(self.prog(), from_ns_train(self.config)):
                super().setup(test_mode)
        except BaseException:
            self._restore()
            raise
        self._count_from_the_loaded_step()

    def _count_from_the_loaded_step(self) -> None:
        """After ``--load-dir`` nerfstudio trains ``max_num_iterations`` steps *from* the loaded step, but its step
        table reads % done and the ETA against ``max_num_iterations`` alone: 500 steps into a 120-step edit printed
        "416.67 %" and an ETA of "23 h, 59 m" (a negative time, `make demo`). The table's end is the run's last
        step."""
        from nerfstudio.utils import writer

        if self._start_step and "max_iter" in writer.GLOBAL_BUFFER:
            writer.GLOBAL_BUFFER["max_iter"] = self._start_step + self.config.max_num_iterations

    def train(self) -> None:
        self._install(self._ask_stop)
        try:
            with one_line_errors(self.prog(), from_ns_train(self.config)):
                super().train()
        finally:
            self._restore()

    def train_iteration(self, step: int):
        out = super().train_iteration(step)
        if self.stop_signal is not None:
            self._stop(step)
        return out

    def _stop(self, step: int) -> None:
        """Save what the run has done at ``step`` and leave (SystemExit under ns-train, else KeyboardInterrupt)."""
        signum = self.stop_signal
        self.pipeline.finish_pending()
        self.save_checkpoint(step)
        edited = self.write_edited()
        where = f"checkpoint {self.checkpoint_dir / checkpoint_name(step)}"
        if edited is not None:
            where += f", edited views in {edited}"
        _say(f"{self.prog()}: interrupted at step {step}; saved {where}")
        self._restore()
        if from_ns_train(self.config):
            raise SystemExit(128 + signum)
        raise KeyboardInterrupt

    def _after_train(self) -> None:
        self.pipeline.finish_pending()  # the last asynchronous update belongs in the final checkpoint
        self.pipeline.finished = True  # a resume of the final checkpoint edits at once: pretraining is done
        self.write_edited()
        super()._after_train()

    def _train_complete_viewer(self) -> None:
        """nerfstudio waits here for Ctrl-C once training is done: everything is saved, so it quits with 0."""
        if _main_thread():
            signal.signal(signal.SIGINT, lambda *_: os._exit(0))
        super()._train_complete_viewer()

    # --------------------------------------------------------------------------------------------- outputs
    def write_edited(self) -> Optional[Path]:
        """Write ``OUTPUT/edited/`` (a nerfstudio dataset of the edited views); its path, or None when the
        pipeline has no training set here (not the main process, or not set up for training)."""
        from .edited import write_edited

        if not self.is_main() or getattr(self.pipeline, "images", None) is None:
            return None
        return write_edited(self.pipeline, self.base_dir / "edited")

    def is_main(self) -> bool:
        from nerfstudio.utils import comms

        return comms.is_main_process()

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written to a temporary folder beside ``nerfstudio_models`` and renamed into
        it; with ``save_only_latest_checkpoint`` the older ones are removed after the rename."""
        if not self.is_main():
            return
        final_dir = self.checkpoint_dir
        tmp_dir = self.base_dir / f".ckpt-tmp.{os.getpid()}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = tmp_dir
        try:
            super().save_checkpoint(step)
        finally:
            self.checkpoint_dir = final_dir
        final_dir.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(step)
        os.replace(tmp_dir / name, final_dir / name)
        tmp_dir.rmdir()
        if self.config.save_only_latest_checkpoint:
            for old in final_dir.glob("step-*.ckpt"):
                if old.name != name:
                    old.unlink()


def checkpoint_name(step: int) -> str:
    """nerfstudio's checkpoint file name for ``step``."""
    return f"step-{step:09d}.ckpt"

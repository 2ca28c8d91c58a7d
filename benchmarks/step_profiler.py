"""Where a training step's time goes: ``bench train --profile`` hooks this into a ``Trainer`` run.

Its own module because subclassing ``TrainerCallback`` imports transformers, which every
``adapterlab`` command would otherwise pay for at start-up (the CLI registers ``bench train``
by importing ``benchmarks.train``).
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from .train import _synchronize


class StepProfiler(TrainerCallback):
    """torch.profiler over ``steps`` optimizer steps after ``skip`` warm-up steps: the busiest ops
    and how much of the wall time the GPU was busy (low = the step waits on the CPU)."""

    def __init__(self, on_cuda: bool, skip: int = 5, steps: int = 5):
        self.on_cuda, self.skip, self.steps = on_cuda, skip, steps
        self._profile = None
        self._started = None
        self.wall_seconds = None

    def on_step_begin(self, args, state, control, **kw):
        import torch

        if state.global_step == self.skip and self._profile is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.on_cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities)
            self._profile.__enter__()
            self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._profile is not None and self.wall_seconds is None and state.global_step >= self.skip + self.steps:
            _synchronize(self.on_cuda)
            self.wall_seconds = time.perf_counter() - self._started
            self._profile.__exit__(None, None, None)

    def summary(self, rows: int = 25) -> tuple[dict, str]:
        """(numbers for the JSON, the profiler's table as text); empty when nothing was profiled."""
        if self.wall_seconds is None:
            return {}, ""
        events = self._profile.key_averages()

        def device_us(e):
            return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))

        busy_us = sum(device_us(e) for e in events)
        numbers = {"profiled_steps": self.steps, "wall_ms_per_step": round(self.wall_seconds * 1000 / self.steps, 1),
                   "gpu_busy_ms_per_step": round(busy_us / 1000 / self.steps, 1),
                   "gpu_busy_share": round(busy_us / 1e6 / self.wall_seconds, 3) if self.on_cuda else None,
                   "cpu_ops_launched_per_step": sum(e.count for e in events) // self.steps}
        sort = "self_cuda_time_total" if self.on_cuda else "self_cpu_time_total"
        text = (events.table(sort_by="self_cpu_time_total", row_limit=rows) + "\n\n"
                + (events.table(sort_by=sort, row_limit=rows) if self.on_cuda else ""))
        return numbers, text

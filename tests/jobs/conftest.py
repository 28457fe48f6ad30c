"""Shared helpers of the job tests."""

import pytest
import torch


class InterruptAt:
    """Progress that raises KeyboardInterrupt (as Ctrl-C would) once ``step`` steps are done."""

    def __init__(self, step: int):
        self.step, self.done = step, 0

    def plan(self, runs: int, total: int) -> None:
        pass

    def start(self, description: str, total: int, done: int = 0) -> None:
        self.done += done

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.done == self.step:
            raise KeyboardInterrupt


class RecordingProgress:
    """Progress that records what a job tells it."""

    def __init__(self):
        self.plans, self.starts, self.advanced = [], [], 0

    def plan(self, runs: int, total: int) -> None:
        self.plans.append((runs, total))

    def start(self, description: str, total: int, done: int = 0) -> None:
        self.starts.append((total, done))

    def advance(self, steps: int = 1) -> None:
        self.advanced += steps


@pytest.fixture
def interrupt_at():
    """``interrupt_at(n)``: a Progress that interrupts the job after its n-th step."""
    return InterruptAt


@pytest.fixture
def poison_estimator(monkeypatch):
    """``poison_estimator(job_module, name, rows, after)``: from its ``after``-th training estimate
    on (calls on ``rows`` rows: variance draws tile the rows, so they are not counted), the
    estimator ``name`` built by ``job_module`` returns NaN gradients. Other estimators are untouched.
    """

    def poison(job_module, name: str, rows: int, after: int) -> None:
        build = job_module.build_estimator

        def build_poisoned(requested: str, settings, shape):
            estimator = build(requested, settings, shape)
            if requested != name:
                return estimator
            forward, calls = estimator.forward, [0]

            def forward_with_nan(logits, f, k, generator):
                estimate = forward(logits, f, k, generator)
                if logits.shape[0] == rows:
                    calls[0] += 1
                    if calls[0] >= after:
                        estimate.grad = torch.full_like(estimate.grad, float("nan"))
                return estimate

            estimator.forward = forward_with_nan  # nn.Module.__call__ looks forward up on the instance
            return estimator

        monkeypatch.setattr(job_module, "build_estimator", build_poisoned)

    return poison

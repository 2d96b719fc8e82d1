"""The one training loop: schedule, time budget (injected clock), best epoch and early stopping, resume,
determinism, the JSON-lines log. A toy regression job keeps it fast; every task runs the same code."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from training.trainer import Job, Schedule, TrainerConfig, fit, make_optimizer

CONFIG = TrainerConfig(epochs=4, batch_size=8, lr=0.2, warmup_epochs=0.0, threads=1)


def toy_job(validation: list[float] | None = None, seed: int = 0) -> Job:
    """y = 3x - 1 from 32 points; `validation` scripts the val_score of successive epochs."""
    torch.manual_seed(seed)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    y = 3 * x - 1
    model = nn.Linear(1, 1)
    scores: Iterator[float] | None = iter(validation) if validation is not None else None

    def loss(net: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        error = (net(x[batch]) - y[batch]) ** 2
        return {"total": error.mean(), "max": error.max()}

    def validate(_model: nn.Module) -> dict[str, float]:
        assert scores is not None
        return {"val_score": next(scores)}

    return Job(model=model, train_size=32, batch=lambda idx, _gen: idx, loss=loss,
               validate=validate if scores is not None else None, monitor="val_score" if scores is not None else "")


class FakeClock:
    """Seconds advance only when a test says so: no sleeps decide anything."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("cosine", 0, 0.1),  # warm-up starts at lr / 10
        ("cosine", 2, 0.55),  # halfway through a 4-step warm-up
        ("cosine", 4, 1.0),  # warm-up done: the cosine starts at lr
        ("cosine", 40, 0.0),  # the end of the run
        ("constant", 30, 1.0),
        ("step", 19, 1.0),  # epochs 0..9: before the first decay (step_size 10 epochs of 2 steps)
        ("step", 20, 0.1),
    ],
)
def test_learning_rate_schedule(schedule: str, step: int, expected: float) -> None:
    config = TrainerConfig(epochs=20, lr=1.0, warmup_epochs=2.0, schedule=schedule, step_size=10)  # type: ignore[arg-type]
    assert Schedule(config, steps_per_epoch=2).lr(step) == pytest.approx(expected, abs=1e-9)


def test_time_budget_compresses_the_cosine_and_stops_the_run() -> None:
    clock = FakeClock()
    schedule = Schedule(TrainerConfig(epochs=100, lr=1.0, warmup_epochs=0.0, max_minutes=1.0), 10, clock)
    assert schedule.lr(0) == pytest.approx(1.0) and not schedule.out_of_time(0)
    clock.now = 30.0  # half the budget, 0% of the steps: the wall clock is further along
    assert schedule.lr(1) == pytest.approx(0.5)
    clock.now = 60.0
    assert schedule.out_of_time(2) and schedule.lr(2) == pytest.approx(0.0)


def test_a_run_out_of_time_stops_by_the_time_budget() -> None:
    clock = FakeClock()
    job = toy_job()
    original = job.loss

    def slow_loss(net: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        clock.now += 7.0  # every step "takes" 7 s of a 60 s budget
        return original(net, batch)

    job.loss = slow_loss
    result = fit(job, replace(CONFIG, epochs=50, max_minutes=1.0), progress=False, clock=clock)
    assert result.stopped_by == "time budget" and result.steps == 9  # 9 x 7 s crosses 60 s


@pytest.mark.parametrize(
    ("scores", "patience", "best_epoch", "epochs_run"),
    [
        ([0.5, 0.7, 0.6, 0.65], 0, 2, 4),  # no early stopping: all epochs, the best kept
        ([0.5, 0.7, 0.6, 0.65, 0.6, 0.6], 2, 2, 4),  # two epochs without a better score: stop
        ([0.9, 0.8, 0.7, 0.6], 1, 1, 2),
    ],
)
def test_best_epoch_and_early_stopping(scores: list[float], patience: int, best_epoch: int, epochs_run: int) -> None:
    result = fit(toy_job(scores), replace(CONFIG, epochs=len(scores), patience=patience), progress=False)
    assert (result.best_epoch, result.epochs_run) == (best_epoch, epochs_run)
    assert result.best_metrics == {"val_score": scores[best_epoch - 1]}
    assert result.stopped_by == ("patience" if epochs_run < len(scores) else "epochs")


def test_without_validation_the_last_epoch_is_kept() -> None:
    result = fit(toy_job(), CONFIG, progress=False)
    assert result.best_epoch == CONFIG.epochs and result.best_metrics == {}


def test_it_learns_and_is_deterministic_for_a_seed() -> None:
    a = fit(toy_job(seed=0), replace(CONFIG, epochs=30), progress=False)
    b = fit(toy_job(seed=0), replace(CONFIG, epochs=30), progress=False)
    c = fit(toy_job(seed=0), replace(CONFIG, epochs=30, seed=1), progress=False)
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    assert not torch.equal(a.best_state["weight"], c.best_state["weight"])  # another shuffle order
    assert a.best_state["weight"].item() == pytest.approx(3.0, abs=0.1)
    assert a.history[-1]["loss"] < a.history[0]["loss"]


def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path) -> None:
    whole = fit(toy_job(seed=0), CONFIG, tmp_path / "whole", progress=False)
    interrupted = toy_job(seed=0)
    original, calls = interrupted.loss, []

    def crash_in_epoch_three(net: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        if len(calls) > 8:  # 4 steps per epoch: the state after epoch 2 is on disk
            raise KeyboardInterrupt
        return original(net, batch)

    interrupted.loss = crash_in_epoch_three
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, CONFIG, tmp_path / "split", progress=False)
    resumed = fit(toy_job(seed=0), CONFIG, tmp_path / "split", resume=True, progress=False)
    assert resumed.epochs_run == CONFIG.epochs and resumed.steps == whole.steps
    assert all(torch.equal(whole.best_state[k], resumed.best_state[k]) for k in whole.best_state)
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # the log continues, not restarts


def test_json_lines_log_has_one_row_per_epoch_with_every_loss(tmp_path: Path) -> None:
    fit(toy_job([0.1, 0.2, 0.3, 0.4]), CONFIG, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == CONFIG.epochs
    assert {"epoch", "step", "lr", "loss", "loss_max", "val_score", "seconds"} <= set(rows[0])
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_no_weight_decay_on_biases_and_norm_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    groups = make_optimizer(list(model.named_parameters()), TrainerConfig(weight_decay=0.1)).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)} and groups[1]["weight_decay"] == 0.0


def test_empty_training_set_runs_no_step() -> None:
    job = toy_job()
    job.train_size = 0
    result = fit(job, replace(CONFIG, epochs=2), progress=False)
    assert result.steps == 0 and result.epochs_run == 2

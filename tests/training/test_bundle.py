"""The bundled recipes: each names an architecture that serves its task, and the step-by-step commands its
card prints parse back, through the real CLI parser, into exactly the recipe's training options."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from training.bundle import RECIPES, Recipe
from training.cli import build_parser, parse_arch_options
from training.registry import get_arch
from training.tasks import get_task

STAGES = [(recipe, index) for recipe in RECIPES for index in range(len(recipe.stages))]


def test_every_model_file_has_one_recipe() -> None:
    names = [r.name for r in RECIPES]
    assert len(names) == len(set(names))
    committed = {p.stem.split("-")[0] for p in (Path(__file__).resolve().parents[2] / "models").glob("*.onnx")}
    assert committed == set(names)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_architecture_serves_the_task(recipe: Recipe) -> None:
    assert recipe.task in get_arch(recipe.arch).tasks
    get_arch(recipe.arch).make_config(recipe.arch_options)  # options the architecture knows


@pytest.mark.parametrize(("recipe", "index"), STAGES, ids=[f"{r.name}-stage{i + 1}" for r, i in STAGES])
def test_card_command_reproduces_the_recipe(recipe: Recipe, index: int) -> None:
    argv = shlex.split(recipe.train_command(index, Path("runs")))[3:]  # drop "python -m training"
    args = build_parser(recipe.task).parse_args(argv)
    config_cls = get_task(recipe.task).config_cls
    parsed = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
    assert parsed == recipe.config(recipe.stages[index])
    assert (args.task, args.arch, args.data, args.count) == (recipe.task, recipe.arch, recipe.data, recipe.count)
    assert parse_arch_options(args.arch_option) == recipe.arch_options
    assert bool(args.init) == (index > 0)  # later stages start from the previous stage's checkpoint


def test_make_models_fits_three_hours_with_two_jobs() -> None:
    """Budgeted minutes of the dense recipes, two at a time, plus a generous allowance for data generation,
    the classifiers, the embedder and the exports."""
    budgets = sorted((sum(s.options.get("max_minutes", 0.0) for s in r.stages) for r in RECIPES), reverse=True)
    two_at_a_time = sum(budgets[0::2])  # longest first on two workers: the first of each pair bounds it
    assert two_at_a_time + 60 <= 180

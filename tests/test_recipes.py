"""Every shipped recipe in recipes/ is a valid recipe (its paths need not exist yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from potstill.config import load_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name

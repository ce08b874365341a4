"""Configuration: the `Recipe` (assembled from the sections each layer owns) and reading
it from YAML with ``key.sub=value`` overrides."""

from potstill.cache.settings import TeachConfig
from potstill.config.load import apply_overrides, load_recipe, validate_recipe
from potstill.config.schema import STAGES, LossName, LossTermConfig, Recipe
from potstill.data.settings import DataConfig
from potstill.evaluation.settings import EvalConfig
from potstill.models.settings import (
    DEFAULT_STUDENT_LAYERS,
    FreshConfig,
    FromTeacher,
    LoraConfig,
    StudentConfig,
)
from potstill.synth.settings import GenerateConfig, TaskConfig
from potstill.train.settings import TrainConfig

__all__ = [
    "DEFAULT_STUDENT_LAYERS",
    "STAGES",
    "DataConfig",
    "EvalConfig",
    "FreshConfig",
    "FromTeacher",
    "GenerateConfig",
    "LoraConfig",
    "LossName",
    "LossTermConfig",
    "Recipe",
    "StudentConfig",
    "TaskConfig",
    "TeachConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "validate_recipe",
]

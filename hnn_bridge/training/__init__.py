"""Training (§3.1, §4.1): the loop for one network, the runner for a recipe's rows and
seeds, atomic checkpoints for resuming, and terminal progress.

The straight path: `hnn_bridge.recipe.load_recipe` -> `Recipe.configure` ->
`runner.run_recipe` (per row: `loop.train_model`) -> `hnn_bridge.report.write_report`.
"""

from .loop import TIE_RULE, EpochRecord, Metrics, NonFiniteLoss, Progress, TrainOptions, evaluate, train_model
from .runner import RunOptions, run_recipe

__all__ = [
    "TIE_RULE",
    "EpochRecord",
    "Metrics",
    "NonFiniteLoss",
    "Progress",
    "RunOptions",
    "TrainOptions",
    "evaluate",
    "run_recipe",
    "train_model",
]

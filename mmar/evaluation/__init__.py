"""Offline quality checks: analytic checkers that read generated samples and captions against the truth."""

from mmar.evaluation.checkers import CHECKERS, Checker, ShapesChecker, checker_for
from mmar.evaluation.evaluate import checker_of, evaluate, evaluate_captions
from mmar.evaluation.moving_shapes_checker import MovingShapesChecker, describe_clip
from mmar.evaluation.prompt_following import evaluation_prompts, report_markdown, score
from mmar.evaluation.shapes_checker import Description, ShapeCheck, check, describe

__all__ = ["CHECKERS", "Checker", "Description", "MovingShapesChecker", "ShapeCheck", "ShapesChecker", "check",
           "checker_for", "checker_of", "describe", "describe_clip", "evaluate", "evaluate_captions", "evaluation_prompts", "report_markdown", "score"]

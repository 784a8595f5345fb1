"""Offline quality checks: analytic checkers that read generated samples against their captions."""

from mmar.evaluation.prompt_following import evaluation_prompts, report_markdown, score
from mmar.evaluation.shapes_checker import Description, ShapeCheck, check, describe

__all__ = ["Description", "ShapeCheck", "check", "describe", "evaluation_prompts", "report_markdown", "score"]

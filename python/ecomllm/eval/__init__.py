"""Evaluation: task metrics for [CLASSIFY], [EXTRACT] and [QA] (:mod:`ecomllm.eval.metrics`)."""

from .metrics import TASK_METRICS, classify_metrics, extract_metrics, qa_metrics, token_f1

__all__ = ["TASK_METRICS", "classify_metrics", "extract_metrics", "qa_metrics", "token_f1"]

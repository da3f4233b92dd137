"""Data utilities: mixing several task datasets into one training stream."""

from .mixing import mix_tasks, task_probabilities

__all__ = ["mix_tasks", "task_probabilities"]

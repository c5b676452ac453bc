"""Distillation: initialising a ModernAlbert student from a pretrained teacher encoder."""

from .init import InitReport, init_from_teacher

__all__ = ["InitReport", "init_from_teacher"]

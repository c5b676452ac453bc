"""Distillation: initialising a ModernAlbert student from a pretrained teacher encoder."""

from .init import InitReport, init_from_teacher, rrt_svd_init

__all__ = ["InitReport", "init_from_teacher", "rrt_svd_init"]

"""The main job: distil, fine-tune, merge, evaluate and export a ModernAlbert on real data, with a report."""

from .pipeline import PROFILES, Quickstart, run_quickstart

__all__ = ["PROFILES", "Quickstart", "run_quickstart"]

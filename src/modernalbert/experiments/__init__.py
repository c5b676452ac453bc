"""Controlled experiments on ModernAlbert: the ablation study of MoL against its alternatives
(``modernalbert experiment ablation RECIPE``)."""

from .ablation import AblationRecipe, AblationStudy, Comparison, compare, format_mean_std, run_ablation

__all__ = ["AblationRecipe", "AblationStudy", "Comparison", "compare", "format_mean_std", "run_ablation"]

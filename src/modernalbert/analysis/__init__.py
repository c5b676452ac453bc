"""Analysis tools for trained ModernAlbert models (routing analytics)."""

from .routing import REPORT_JSON, REPORT_PNG, routed_layers, routing_report

__all__ = ["REPORT_JSON", "REPORT_PNG", "routed_layers", "routing_report"]

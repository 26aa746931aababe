"""Evaluation: metrics, a physics-based synthetic DR benchmark, baselines and a visual report."""

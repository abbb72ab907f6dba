"""A shop simulator with known ground truth: the data the demo, tests and benchmarks run on."""

from crm.simulate.engine import SimConfig, SimSummary, simulate

__all__ = ["SimConfig", "SimSummary", "simulate"]

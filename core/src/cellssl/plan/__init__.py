"""The typed run plan: one validated object for a whole run (see :mod:`cellssl.plan.model`).

:func:`build_plan` validates every section of a run config; :func:`check_plan` adds the checks across
sections that open the data and the weights; :func:`prepare_run_dir` keeps a run directory's outputs
consistent with one plan.
"""

from cellssl.plan.build import build_plan
from cellssl.plan.model import Component, DataSpec, RunPlan

__all__ = ["Component", "DataSpec", "RunPlan", "build_plan"]

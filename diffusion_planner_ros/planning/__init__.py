"""Planners for every method and the bundle that rebuilds one from a path."""

from __future__ import annotations

from pathlib import Path

from diffusion_planner_ros.planning.baselines import (BCPlanner, DecisionDiffuserPlanner,
                                                      JointDiffusionPlanner)
from diffusion_planner_ros.planning.bundle import Bundle, load_bundle, read_method, save_bundle
from diffusion_planner_ros.planning.planner import (BasePlanner, Plan, SamplingDiverged,
                                                    TrajectoryDiffuserPlanner)

PLANNERS = {method: cls for cls in (TrajectoryDiffuserPlanner, DecisionDiffuserPlanner,
                                    JointDiffusionPlanner, BCPlanner) for method in cls.methods}


def planner_class(path: str | Path) -> type:
    """Return the planner class of the method a bundle records."""
    return PLANNERS[read_method(path)]


def load_planner(path: str | Path | Bundle, device: str | None = None,
                 expected_env_id: str | None = None, **overrides) -> BasePlanner:
    """Build the planner of whatever method the bundle at ``path`` (or loaded) holds."""
    cls = PLANNERS[path.method] if isinstance(path, Bundle) else planner_class(path)
    return cls.from_bundle(path, device, expected_env_id, **overrides)


__all__ = ['BCPlanner', 'BasePlanner', 'Bundle', 'DecisionDiffuserPlanner', 'SamplingDiverged',
           'JointDiffusionPlanner', 'PLANNERS', 'Plan', 'TrajectoryDiffuserPlanner',
           'load_bundle', 'load_planner', 'planner_class', 'save_bundle']

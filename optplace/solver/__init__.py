"""Placement solver: problem compilation, capacity oracles, strategies (greedy, MILP, baselines),
objectives, lower bound and repair.

Entry points: ``compile_problem(scenario, base_dir) -> Problem``, ``make_oracle(problem, kind)``,
``solve(problem, oracle=None, strategy=None) -> Plan``, ``repair(problem, oracle, plan, starved, oom)``.
"""

from optplace.solver.capacity import (
    AnalyticCapacity,
    CapacityOracle,
    Estimate,
    Mix,
    SurrogateCapacity,
    TwinCapacity,
    make_oracle,
)
from optplace.solver.objectives import OBJECTIVES, Objective, get_objective
from optplace.solver.plan import GpuAssignment, Plan, gpu_plans
from optplace.solver.problem import (
    AdapterClass,
    AdapterItem,
    GpuType,
    Infeasible,
    Problem,
    WorkloadStats,
    compile_problem,
    make_problem,
)
from optplace.solver.repair import RepairResult, repair
from optplace.solver.strategies import STRATEGIES, SolveOptions, get_strategy, solve

__all__ = [
    "AdapterClass",
    "AdapterItem",
    "AnalyticCapacity",
    "CapacityOracle",
    "Estimate",
    "GpuAssignment",
    "GpuType",
    "Infeasible",
    "Mix",
    "OBJECTIVES",
    "Objective",
    "Plan",
    "Problem",
    "RepairResult",
    "STRATEGIES",
    "SolveOptions",
    "SurrogateCapacity",
    "TwinCapacity",
    "WorkloadStats",
    "compile_problem",
    "get_objective",
    "get_strategy",
    "gpu_plans",
    "make_oracle",
    "make_problem",
    "repair",
    "solve",
]

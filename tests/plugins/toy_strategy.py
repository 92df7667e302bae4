"""A toy strategy in one file (the registry test): the fast class-pattern greedy's plan, as is.

Importing this module registers ``toy-fast-greedy``; nothing else is edited.
"""

from __future__ import annotations

from optplace.infra.registry import STRATEGIES
from optplace.solver.greedy import greedy_fast


@STRATEGIES.register("toy-fast-greedy")
class ToyFastGreedy:
    def solve(self, problem, oracle, options, deadline):
        return greedy_fast(problem, oracle, deadline), ["toy: the fast greedy's plan, unimproved"], None

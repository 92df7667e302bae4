"""Placement solver: objectives, greedy heuristics, MILP, baselines, lower bound, repair."""

"""A toy objective in one file (the registry test): fewest GPUs, ties broken by fewer LoRA slots.

The value is ``GPUs + SLOT_WEIGHT × Σ max_loras`` on the solver's predictions and the same measure on
a twin report, so a plan solved with it carries a non-integral objective value a test can recompute.
Importing this module registers ``toy_gpus_and_slots``; nothing else is edited.
"""

from __future__ import annotations

from optplace.solver.objectives import OBJECTIVES, Objective

#: Weight of one LoRA slot relative to one GPU.
SLOT_WEIGHT = 1e-3


@OBJECTIVES.register("toy_gpus_and_slots")
class ToyGpusAndSlots(Objective):
    description = "fewest GPUs, then fewest LoRA slots (a toy)"

    def value(self, gpus):
        used = [g for g in gpus if g.adapters]
        return len(used) + SLOT_WEIGHT * sum(g.max_loras for g in used)

    def score_report(self, plan, rep):
        used = [g for g in rep.gpus if g.adapters]
        return len(used) + SLOT_WEIGHT * sum(g.max_loras for g in used)

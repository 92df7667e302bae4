"""A toy arrival model in one file (the registry test): synchronised batches.

Every ``period_s`` seconds each adapter sends a Poisson(rate × period) batch of requests at the same
instant: the long-run rate is the adapter's, the traffic as bursty as it gets. Its planning
burstiness is measured on the workload it generates (the path a model without a closed form takes).
Importing this module registers ``toy_batches`` (spec class, generator, burstiness); nothing else is
edited.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from optplace.specs.model import ArrivalSpecBase
from optplace.twin.arrivals import ArrivalDraw, ArrivalModel, arrival_model


class ToyBatchArrivals(ArrivalSpecBase):
    """Synchronised batches every ``period_s`` seconds."""

    kind: Literal["toy_batches"]
    period_s: float = Field(default=20.0, gt=0, description="Time between batches [s].")


@arrival_model
class ToyBatches(ArrivalModel):
    spec = ToyBatchArrivals
    #: Workloads generated so far (the test checks the twin used this generator).
    generated = 0

    def generate(self, spec, rates, duration_s, rng, assign_rng, lengths, base_dir):
        type(self).generated += 1
        ticks = np.arange(0.0, duration_s, float(spec.period_s))
        counts = rng.poisson(np.outer(rates, np.full(ticks.size, float(spec.period_s))))  # adapters × ticks
        adapter = np.repeat(np.repeat(np.arange(len(rates)), ticks.size), counts.ravel())
        t = np.repeat(np.tile(ticks, len(rates)), counts.ravel())
        return ArrivalDraw(t, adapter)

    def burstiness(self, spec, measured):
        return float(measured().adapter_arrival_cv), 1.0

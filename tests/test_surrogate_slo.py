"""SLO surrogates: the twin's SLO figures of a run, the boundary design, the recipe build, the shipped models,
and the capacity oracle's SLO requirement.

A tiny SLO recipe (twin windows of 60 s on up to 8 adapters) is built end to end and rebuilt (nothing new
is run, same bytes). The shipped models are checked against their recipes, the twin and the profiles, and
re-scored on their shipped held-out rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from optplace.specs import bundled_profiles, load_scenario_text
from optplace.surrogate.config import GpuCase
from optplace.surrogate.features import FEATURE_INDEX
from optplace.surrogate.physics import physics_for
from optplace.surrogate.slo import (
    SloDesign,
    evaluate_slo,
    read_slo_rows,
    run_slo_sweep,
    scaled_case,
    seed_agreement,
)
from optplace.surrogate.slo_model import (
    build_slo_recipe,
    has_default_slo,
    load_shipped_slo,
    load_slo_recipe,
    rows_from_dicts,
    shipped_holdout,
    shipped_slo_path,
    slo_recipe_path,
    verdict_figures,
)

PROFILES = ("llama-3.1-8b-instruct@h100-64gb", "qwen-2.5-7b-instruct@h100-64gb")
LLAMA = PROFILES[0]

SCENARIO = "name: t\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\nadapters:\n"

TINY = """
slo_recipe_version: 1
profile: llama-3.1-8b-instruct@h100-64gb
sweeps:
  - {name: s_1, seed: 21, design: {n_points: 30, n_chains: 4, chain_steps: 3, duration_s: 60.0, max_adapters: 8}}
holdout:
  sweeps:
    - {name: s_test, seed: 23, design: {n_points: 8, n_chains: 1, chain_steps: 2, duration_s: 60.0, max_adapters: 8}}
training: {seed: 0}
"""


def test_figures_of_a_light_and_an_overloaded_gpu() -> None:
    light = GpuCase(ranks=(8, 16), rates_rps=(0.2, 0.2), max_loras=2, duration_s=120.0, seed=3)
    f = evaluate_slo(LLAMA, light)
    assert f.ok and f.stable and f.margin < 1.0
    heavy = GpuCase(ranks=(8, 16), rates_rps=(40.0, 40.0), max_loras=2, duration_s=120.0, seed=3)
    g = evaluate_slo(LLAMA, heavy)
    assert not g.ok and (not g.stable or g.margin > 1.0)
    assert g.margin > f.margin


def test_design_sets_the_load_relative_to_fluid_capacity() -> None:
    d = SloDesign(n_points=4, n_chains=0, duration_s=60.0, max_adapters=8)
    u = np.full(12, 0.5)
    case = scaled_case(LLAMA, u, d, seed=1, group=0, index=0)
    assert case is not None
    from optplace.surrogate.features import feature_row

    rho = physics_for(LLAMA).derive_row(feature_row(case).tolist())[0]
    lo, hi = d.rho_range
    assert rho == pytest.approx(math.sqrt(lo * hi), rel=1e-6)  # u = 0.5: the log-midpoint of the range


def test_tiny_recipe_builds_rebuilds_identically_and_refuses_other_provenance(tmp_path: Path) -> None:
    rp = tmp_path / "tiny.yaml"
    rp.write_text(TINY, encoding="utf-8")
    rec = load_slo_recipe(rp)
    rep = build_slo_recipe(rec, tmp_path / "out")
    meta = json.loads(rep.model_json.read_text(encoding="utf-8"))
    assert meta["recipe_hash"] == rec.hash and meta["profile"] == LLAMA
    assert {s[0]: s[2] for s in rep.steps} == {"s_1": 42, "s_test": 10}
    assert rep.metrics["holdout"]["n"] == 10
    first = rep.model_json.read_bytes()
    again = build_slo_recipe(rec, tmp_path / "out")
    assert all(new == 0 for _, _, new in again.steps)
    assert again.model_json.read_bytes() == first
    # a sweep file of other provenance is refused, not overwritten
    with pytest.raises(ValueError, match="other provenance"):
        run_slo_sweep(LLAMA, tmp_path / "out" / "sweeps" / "s_1", SloDesign(n_points=3, duration_s=60.0), seed=21)
    # the twin against itself: the same rows under another twin seed
    n, a, b = seed_agreement(LLAMA, tmp_path / "out" / "sweeps" / "s_1", rec.sweeps[0].design, 21, 5)
    assert n == 5 and a.shape == b.shape == (5,)
    rows = read_slo_rows(tmp_path / "out" / "sweeps" / "s_1.csv")
    for r in rows.values():  # the verdict is a stable queue with both latencies within their bounds
        assert int(r["ok"]) == int(int(r["stable"]) and max(float(r["ttft_ratio"]), float(r["tpot_ratio"])) <= 1.0)


def test_recipe_refuses_unknown_keys(tmp_path: Path) -> None:
    rp = tmp_path / "bad.yaml"
    rp.write_text(TINY + "extra: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown keys"):
        load_slo_recipe(rp)


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_slo_model_matches_its_recipe_twin_and_profile(profile: str) -> None:
    sur = load_shipped_slo(profile)  # refuses another twin version or profile numbers
    assert sur.meta["recipe_hash"] == load_slo_recipe(slo_recipe_path(profile)).hash
    raw = shipped_holdout(profile)
    h = rows_from_dicts(raw)
    pv, lm = sur.predict_many(h.X)
    fig = verdict_figures(h.violates, (pv >= sur.threshold).astype(float))
    # the shipped file's held-out figure is reproduced from the shipped rows
    assert fig["macro_f1"] == pytest.approx(sur.meta["metrics"]["holdout"]["macro_f1"], abs=1e-9)
    assert fig["macro_f1"] >= 0.85
    # one row and many rows agree
    one = [sur.predict_row(r.tolist()) for r in h.X[:20]]
    assert [p.meets for p in one] == (pv[:20] < sur.threshold).tolist()
    assert np.allclose([math.log(p.margin) for p in one], lm[:20])


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_slo_model_separates_light_from_overloaded(profile: str) -> None:
    sur = load_shipped_slo(profile)
    lam, _ = physics_for(profile).fluid(16.0, 8.0, 8.0, 223.0, 196.0)
    light = sur.meets([0.1 * lam / 8] * 8, [16] * 8, 8, 223.0, 196.0)
    over = sur.meets([1.2 * lam / 8] * 8, [16] * 8, 8, 223.0, 196.0)
    assert light.meets and light.margin < 1.0
    assert not over.meets and over.margin > light.margin
    # sticky slots: 200 adapters on 4 slots miss the SLO at a load one slot-per-adapter GPU serves
    sticky = sur.meets([0.3 * lam / 200] * 200, [16] * 200, 4, 223.0, 196.0)
    assert not sticky.meets


def test_default_slo_detection() -> None:
    base = SCENARIO + "  - {name: a, rank: 8, rate_rps: 0.5}\n"
    assert has_default_slo(load_scenario_text(base))
    assert not has_default_slo(load_scenario_text(base + "slo: {ttft_p99_ms: 1000}\n"))
    assert not has_default_slo(load_scenario_text(base + "slo: none\n"))


def test_surrogate_oracle_requires_the_slo_verdict_when_asked() -> None:
    from optplace.solver import compile_problem
    from optplace.solver.capacity import Mix, SurrogateCapacity, make_oracle

    text = SCENARIO + "  - {group: g, count: 120, rank: 16, rate_rps: 0.02}\n"
    prob = compile_problem(load_scenario_text(text))
    plain = make_oracle(compile_problem(load_scenario_text(text + "slo: none\n")), "surrogate")
    slo = make_oracle(prob, "surrogate", slo=True)
    assert isinstance(slo, SurrogateCapacity) and slo.slo_models is not None
    mix = Mix.of(prob.adapters)
    # 120 adapters on 4 sticky slots: the throughput rule passes, the SLO (requests wait for a slot) does not
    assert plain.evaluate(0, mix, 4).feasible
    e = slo.evaluate(0, mix, 4)
    assert not e.feasible and e.reason == "slo"
    # with a slot per adapter both agree, and the SLO requirement only ever removes configurations
    assert slo.evaluate(0, mix, 120).feasible
    for L in (2, 8, 16, 32, 64):
        assert not (slo.evaluate(0, mix, L).feasible and not plain.evaluate(0, mix, L).feasible)
    other = load_scenario_text(SCENARIO + "  - {name: a, rank: 8, rate_rps: 0.5}\nslo: {ttft_p99_ms: 500}\n")
    with pytest.raises(ValueError, match="default SLO"):
        make_oracle(compile_problem(other), "surrogate", slo=True)


def test_shipped_files_exist_for_every_bundled_profile_with_a_recipe() -> None:
    for name in bundled_profiles():
        if slo_recipe_path(name).exists():
            assert shipped_slo_path(name).exists()
    assert FEATURE_INDEX["rho_fluid"] > 0


def test_auto_oracle_plans_on_the_slo_verdict_where_it_applies() -> None:
    from optplace.solver import compile_problem
    from optplace.solver.capacity import Mix, make_oracle

    base = SCENARIO + "  - {group: g, count: 120, rank: 16, rate_rps: 0.02}\n"
    auto = make_oracle(compile_problem(load_scenario_text(base)), "auto")
    # the default SLO: the SLO models judge every GPU, at the load solve checks plans at (+5 % by default)
    assert auto.name == "surrogate+slo" and auto.slo_load_scale == pytest.approx(1.05)
    mix = Mix.of(auto.problem.adapters)
    e = auto.evaluate(0, mix, 4)
    assert not e.feasible and e.reason == "slo"
    # another SLO, or none: the throughput surrogates (the SLO models learned the default one only); under
    # another SLO bounding each adapter's TTFT, with the busy-slot rule (test_another_slo_keeps_the_busy_slot_rule)
    for extra, sticky_ok in (("slo: {ttft_p99_ms: 500}\n", False), ("slo: none\n", True)):
        other = make_oracle(compile_problem(load_scenario_text(base + extra)), "auto")
        assert other.name == "surrogate" and other.slo_models is None
        assert other.evaluate(0, mix, 4).feasible == sticky_ok and other.evaluate(0, mix, 120).feasible
    # a larger margin judges the SLO at the larger load: somewhere between the two the verdict flips
    wide = make_oracle(compile_problem(load_scenario_text(base + "slo: {headroom: 1.0}\n")), "auto")
    assert wide.name == "surrogate+slo" and wide.slo_load_scale == pytest.approx(2.0)
    grid = [Mix(mix.ranks, tuple(x * f for x in mix.rates)) for f in (1, 2, 3, 4, 5, 6, 7)]  # a slot each
    narrow_ok = [auto.evaluate(0, m, 120).feasible for m in grid]
    wide_ok = [wide.evaluate(0, m, 120).feasible for m in grid]
    assert all(n or not w for n, w in zip(narrow_ok, wide_ok))  # the wider margin only removes GPUs
    assert sum(wide_ok) < sum(narrow_ok)


def test_another_slo_keeps_the_busy_slot_rule() -> None:
    """Under an SLO the SLO models did not learn, the throughput oracle still refuses the mixes whose busy
    adapters outnumber the slots (a sticky-slot queue breaks any per-adapter TTFT bound), and its bound
    model carries the rule; without a per-adapter TTFT bound it does not."""
    from optplace.solver import compile_problem
    from optplace.solver.capacity import Mix, bound_model, make_oracle
    from optplace.solver.envelope import BUSY_PER_SLOT, busy_slots

    base = SCENARIO + "  - {group: g, count: 120, rank: 16, rate_rps: 0.02}\n"
    verdicts = {}
    for extra in (
        "slo: {ttft_p99_ms: 3000}\n",
        "slo: {ttft_p50_ms: 800, ttft_p99_ms: null}\n",
        "slo: {ttft_p99_ms: 3000, scope: gpu}\n",
        "slo: {ttft_p99_ms: null, tpot_p99_ms: 150}\n",
        "slo: none\n",
    ):
        oracle = make_oracle(compile_problem(load_scenario_text(base + extra)), "surrogate")
        mix = Mix.of(oracle.problem.adapters)
        four = oracle.evaluate(0, mix, 4)
        verdicts[extra] = four.feasible
        assert oracle.evaluate(0, mix, 120).feasible  # a slot each: no sticky-slot queue
        _, name = bound_model(oracle)
        assert ("busy <=" in name) == (not four.feasible)
        if not four.feasible:
            assert four.reason == "slo"
            pt = oracle.analytic.point(0, 16, 4, 4)
            assert busy_slots(mix.rate_array * oracle.slo_load_scale, pt) > BUSY_PER_SLOT * 4
    assert list(verdicts.values()) == [False, False, True, True, True]


def test_another_slo_with_a_tpot_or_itl_bound_caps_the_predicted_itl() -> None:
    """A TPOT / ITL bound of another SLO becomes a cap on the throughput surrogate's mean ITL at the checked
    load (the strictest bound over its multiple); the oracle refuses a GPU beyond it (reason ``slo``) that it
    accepts without the bound, and its envelope, the bound's model, sits below the throughput guard."""
    from optplace.solver import compile_problem
    from optplace.solver.capacity import GUARD, Mix, make_oracle
    from optplace.solver.envelope import ITL_MULTIPLE, itl_cap_ms

    base = SCENARIO + "  - {group: g, count: 16, rank: 16, rate_rps: 0.6}\n"
    assert itl_cap_ms(load_scenario_text(base + "slo: none\n")) == math.inf
    # another TTFT bound keeps the default TPOT bound, now capped too
    assert itl_cap_ms(load_scenario_text(base + "slo: {ttft_p99_ms: 3000}\n")) == pytest.approx(
        200 / ITL_MULTIPLE["tpot_p99_ms"]
    )
    both = load_scenario_text(base + "slo: {tpot_p99_ms: 120, itl_mean_ms: 60}\n")
    assert itl_cap_ms(both) == pytest.approx(min(120 / ITL_MULTIPLE["tpot_p99_ms"], 60 / ITL_MULTIPLE["itl_mean_ms"]))
    own = SCENARIO + "  - {group: g, count: 16, rank: 16, rate_rps: 0.6, slo: {tpot_p99_ms: 50}}\n"
    assert itl_cap_ms(load_scenario_text(own)) == pytest.approx(50 / ITL_MULTIPLE["tpot_p99_ms"])

    free = make_oracle(compile_problem(load_scenario_text(base + "slo: none\n")), "surrogate")
    mix = Mix.of(free.problem.adapters)
    assert free.evaluate(0, mix, 16).feasible
    itl = free.evaluate(0, Mix(mix.ranks, tuple(r * 1.05 for r in mix.rates)), 16).itl_ms  # at the checked load
    for bound, ok in (
        (1.1 * itl * ITL_MULTIPLE["tpot_p99_ms"], True),
        (0.9 * itl * ITL_MULTIPLE["tpot_p99_ms"], False),
    ):
        capped = make_oracle(
            compile_problem(load_scenario_text(base + f"slo: {{tpot_p99_ms: {bound:.3f}}}\n")), "surrogate"
        )
        assert capped.itl_cap_ms == pytest.approx(bound / ITL_MULTIPLE["tpot_p99_ms"], rel=1e-3)
        e = capped.evaluate(0, mix, 16)
        assert e.feasible == ok and (ok or e.reason == "slo")
        assert capped.envelope is not None and capped.envelope.max_factor() <= GUARD
    # a tight bound leaves the envelope well inside the throughput guard at every count
    tight = make_oracle(compile_problem(load_scenario_text(base + "slo: {tpot_p99_ms: 40}\n")), "surrogate")
    assert tight.envelope is not None and tight.envelope.max_factor() < 0.9 * GUARD

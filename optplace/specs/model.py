"""The scenario model: one frozen, typed description of a placement problem.

Field names carry units (``rate_rps``, ``duration_s``). Everything is validated on load; checks
that need several fields (or a profile) live in ``semantic_issues`` so each problem is reported
against the field it concerns.

Names of pluggable concepts — ``objective``, ``solver.strategy``, ``solver.executor``,
``workload.arrivals.kind``, ``workload.lengths.kind`` — are checked against their registry
(:mod:`optplace.infra.registry`), and the JSON schema lists the registered names, so a plug-in
implementation is accepted here without editing this file. The built-in arrival and length specs
below are the pydantic classes their models (``optplace.twin.arrivals`` / ``lengths``) register;
a plug-in model brings its own spec class (a subclass of :class:`ArrivalSpecBase` /
:class:`LengthSpecBase`).
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    StrictBool,
    StrictStr,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic_core import core_schema

from optplace.infra.registry import ARRIVALS, EXECUTORS, LENGTHS, OBJECTIVES, STRATEGIES, Registry
from optplace.specs.hardware import GpuSpec, ModelArch
from optplace.specs.profiles import SUPPORTED_RANKS

Num = Annotated[float, Strict(), AllowInfNan(False)]
PosNum = Annotated[float, Strict(), AllowInfNan(False), Field(gt=0)]
NonNegNum = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0)]
# Request rates: far above any GPU's capacity, yet low enough that sums over 10^6 adapters stay finite.
Rate = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0, le=1e9)]
Fraction = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0, lt=1)]
PosInt = Annotated[int, Strict(), Field(gt=0)]
Name = Annotated[str, Strict(), Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RegisteredName:
    """Field metadata: a string that must be a registered name of ``registry`` (schema: their enum)."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.registry.check, core_schema.str_schema(strict=True))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.registry.names())}


class RegisteredKind:
    """Field metadata: a ``{kind: NAME, ...}`` mapping validated by the spec class that the model
    registered as ``NAME`` in ``registry`` declares (its errors keep their field paths)."""

    def __init__(self, registry: Registry[Any]) -> None:
        self.registry = registry

    def _validate(self, v: Any) -> Any:
        kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
        if kind is None:
            raise ValueError(f"give a 'kind' (registered: {', '.join(self.registry.names())})")
        self.registry.check(kind)
        spec = self.registry.get(kind).spec
        return v if isinstance(v, spec) else spec.model_validate(v)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        specs = [self.registry.get(n).spec for n in self.registry.names()]
        return {
            "oneOf": [handler(s.__pydantic_core_schema__) for s in specs],
            "discriminator": {"propertyName": "kind"},
        }


def spec_kind(spec: type[BaseModel]) -> str:
    """The one name a spec class declares with ``kind: Literal["NAME"]`` (its model registers under it)."""
    args = typing.get_args(spec.model_fields["kind"].annotation)
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{spec.__name__}.kind must be Literal['NAME'] (one name)")
    return args[0]


def registered_by_kind(registry: Registry[Any]) -> Any:
    """Class decorator for a model class with a ``spec`` class attribute: registers one instance in
    ``registry`` under :func:`spec_kind` of its spec (the name is written once, in the spec class)."""

    def deco(cls: Any) -> Any:
        registry.register(spec_kind(cls.spec), cls())
        return cls

    return deco


class ArrivalSpecBase(_Spec):
    """Base of every arrival model's spec class: ``kind`` is the name the model is registered under."""

    kind: str


class LengthSpecBase(_Spec):
    """Base of every length model's spec class: the filters every length model applies. A subclass
    declares ``kind: Literal["NAME"]`` (after the filters, the order the spec's JSON lists them in)."""

    max_input_tokens: PosInt = Field(default=1024, description="Prompts longer than this are redrawn.")
    max_total_tokens: PosInt = Field(default=2048, description="Prompt + output longer than this is redrawn.")
    min_tokens: PosInt = Field(default=4, description="Prompt and output shorter than this are redrawn.")


def _rank(v: int) -> int:
    if v not in SUPPORTED_RANKS:
        raise ValueError(f"rank {v} is not one of {', '.join(map(str, SUPPORTED_RANKS))}")
    return v


Rank = Annotated[int, Strict()]


# --- workload ---------------------------------------------------------------------------------


class PoissonArrivals(ArrivalSpecBase):
    """Independent Poisson stream per adapter."""

    kind: Literal["poisson"]


class GammaArrivals(ArrivalSpecBase):
    """Gamma renewal process per adapter; ``cv`` is the inter-arrival coefficient of variation."""

    kind: Literal["gamma"]
    cv: PosNum = Field(description="Coefficient of variation of inter-arrival times (1 = Poisson).")


class MmppArrivals(ArrivalSpecBase):
    """Two-state Markov-modulated Poisson process (bursts); the long-run mean rate is the adapter's rate."""

    kind: Literal["mmpp"]
    burst_factor: PosNum = Field(default=4.0, description="Rate in the burst state ÷ long-run mean rate.")
    burst_fraction: Annotated[float, Strict(), AllowInfNan(False), Field(gt=0, lt=1)] = Field(
        default=0.1, description="Long-run fraction of time spent in the burst state."
    )
    mean_burst_s: PosNum = Field(default=30.0, description="Mean length of one burst [s].")

    @field_validator("burst_factor")
    @classmethod
    def _factor(cls, v: float) -> float:
        if v <= 1:
            raise ValueError(f"burst_factor must be > 1 (got {v})")
        return v


class TraceArrivals(ArrivalSpecBase):
    """Replay a request trace (CSV: arrived_at, num_prefill_tokens, num_decode_tokens) over the adapters."""

    kind: Literal["trace"]
    path: StrictStr = Field(description="Trace CSV, relative to the spec file.")
    assignment: Literal["by_rate", "uniform", "zipf", "dirichlet"] = "by_rate"
    zipf_s: PosNum = 1.0
    dirichlet_alpha: PosNum = 0.5
    scale: PosNum | None = Field(
        default=None, description="Rate multiplier; default matches the adapters' total rate (by_rate) or 1."
    )


#: Any registered arrival model's spec (validated by the class its model registered).
ArrivalSpec = Annotated[ArrivalSpecBase, RegisteredKind(ARRIVALS)]


class ShareGptLengths(LengthSpecBase):
    """ShareGPT-like lengths (the reference runs' pool: mean ≈ 223 input / 196 output tokens)."""

    kind: Literal["sharegpt"]
    mean_input_tokens: PosNum | None = Field(
        default=None, description="Rescale the ShareGPT shape to this mean prompt length (after the filters)."
    )
    mean_output_tokens: PosNum | None = Field(default=None, description="Likewise for the output length.")
    io_rank_correlation: Annotated[float, Strict(), AllowInfNan(False), Field(ge=-0.95, le=0.95)] = Field(
        default=-0.44,
        description="Rank correlation of prompt and output length (Gaussian copula, marginals kept). "
        "Default fitted by optplace.calibration.reference_fit.fit_length_correlation: the reference runs "
        "hold ~350 KV tokens per running request, independent draws ~440.",
    )


class FixedLengths(LengthSpecBase):
    kind: Literal["fixed"]
    input_tokens: PosInt
    output_tokens: PosInt

    # Other length models redraw what the filters reject; a fixed length would be rejected every time,
    # so it must pass them here (checked per field, so the error names the field and its line).
    @field_validator("input_tokens")
    @classmethod
    def _input_passes_filters(cls, v: int, info: ValidationInfo) -> int:
        lo, hi = info.data.get("min_tokens", 4), info.data.get("max_input_tokens", 1024)
        if not lo <= v <= hi:
            raise ValueError(f"{v} is outside the filters [min_tokens {lo}, max_input_tokens {hi}]")
        return v

    @field_validator("output_tokens")
    @classmethod
    def _output_passes_filters(cls, v: int, info: ValidationInfo) -> int:
        lo, total = info.data.get("min_tokens", 4), info.data.get("max_total_tokens", 2048)
        inp = info.data.get("input_tokens")
        if v < lo:
            raise ValueError(f"{v} is below min_tokens {lo}")
        if inp is not None and inp + v > total:
            raise ValueError(f"input_tokens + output_tokens = {inp + v} exceeds max_total_tokens {total}")
        return v


class LognormalLengths(LengthSpecBase):
    kind: Literal["lognormal"]
    mean_input_tokens: PosNum
    mean_output_tokens: PosNum
    cv_input: PosNum = 1.0
    cv_output: PosNum = 1.0


class TraceLengths(LengthSpecBase):
    kind: Literal["trace"]
    path: StrictStr = Field(description="Trace CSV, relative to the spec file.")


#: Any registered length model's spec.
LengthSpec = Annotated[LengthSpecBase, RegisteredKind(LENGTHS)]


class Workload(_Spec):
    """How requests arrive and how long they are."""

    duration_s: PosNum = Field(default=3600.0, description="Window length; unfinished requests are cancelled.")
    arrivals: ArrivalSpec = Field(
        default_factory=lambda: PoissonArrivals(kind="poisson"),
        description="Arrival model: {kind: NAME, ...} (registered models).",
    )
    lengths: LengthSpec = Field(
        default_factory=lambda: ShareGptLengths(kind="sharegpt"),
        description="Length model: {kind: NAME, ...} (registered models).",
    )


# --- adapters ---------------------------------------------------------------------------------


class AdapterEntry(_Spec):
    """One LoRA adapter."""

    name: Name
    rank: Rank
    rate_rps: Rate = Field(description="Mean request rate [req/s].")
    slo: SloOverride | None = Field(default=None, description="This adapter's own SLO bounds (scope adapter).")

    _check_rank = field_validator("rank")(lambda cls, v: _rank(v))


class Popularity(_Spec):
    """How a group's total rate is split over its adapters."""

    kind: Literal["uniform", "zipf"] = "zipf"
    s: PosNum = Field(default=1.0, description="Zipf exponent.")


class AdapterGroup(_Spec):
    """``count`` adapters named ``<group>-0000…``; each at ``rate_rps``, or sharing ``total_rate_rps``
    by a popularity law."""

    group: Name
    count: Annotated[int, Strict(), Field(gt=0, le=1_000_000)]
    rank: Rank
    rate_rps: Rate | None = None
    total_rate_rps: Rate | None = None
    popularity: Popularity | None = None
    slo: SloOverride | None = Field(default=None, description="The group's adapters' own SLO bounds (scope adapter).")

    _check_rank = field_validator("rank")(lambda cls, v: _rank(v))


def _adapter_tag(v: Any) -> str:
    if isinstance(v, dict):
        return "group" if "group" in v else "adapter"
    return "group" if isinstance(v, AdapterGroup) else "adapter"


AdapterItem = Annotated[
    Union[Annotated[AdapterEntry, Tag("adapter")], Annotated[AdapterGroup, Tag("group")]], Discriminator(_adapter_tag)
]


class Adapter(BaseModel):
    """An expanded adapter (groups resolved): name, rank, mean rate."""

    model_config = ConfigDict(frozen=True)
    name: str
    rank: int
    rate_rps: float


# --- hardware, serving, constraints, solver, placement ----------------------------------------


class PoolEntry(_Spec):
    """GPUs of one type available to the solver."""

    gpu: StrictStr | GpuSpec
    count: Annotated[int, Strict(), Field(gt=0, le=100_000)]
    cost_per_hour: NonNegNum = 1.0
    profile: StrictStr | None = Field(
        default=None, description="Profile JSON (from `optplace calibrate`), relative to the spec file."
    )

    @property
    def gpu_name(self) -> str:
        return self.gpu if isinstance(self.gpu, str) else self.gpu.name


class Serving(_Spec):
    """vLLM engine knobs (vLLM's names and the reference runs' defaults)."""

    max_num_batched_tokens: Annotated[int, Strict(), Field(ge=16, le=1_048_576)] = 2048
    max_num_seqs: Annotated[int, Strict(), Field(ge=1, le=65_536)] = 2048
    gpu_memory_utilization: Annotated[float, Strict(), AllowInfNan(False), Field(gt=0, le=1)] = 0.9
    max_model_len: PosInt | None = Field(default=None, description="Defaults to the model's context length.")


class Constraints(_Spec):
    """What a plan must satisfy."""

    max_throughput_loss: Fraction = Field(
        default=0.10, description="A GPU is starved when delivered token throughput < (1 − this) × offered."
    )
    max_adapter_loss: Annotated[float, Strict(), AllowInfNan(False), Field(ge=0, le=1)] | None = Field(
        default=None, description="Optional: no adapter may lose more than this fraction of its offered tokens."
    )
    # Latency objectives live in the top-level ``slo:`` section; these two names are refused (not
    # accepted and ignored) so a spec written for them learns where the objective goes.
    max_itl_ms: PosNum | None = Field(default=None, description="Refused: write the bound in `slo:` (itl_mean_ms).")
    max_ttft_p99_ms: PosNum | None = Field(
        default=None, description="Refused: write the bound in `slo:` (ttft_p99_ms)."
    )

    @field_validator("max_itl_ms", "max_ttft_p99_ms")
    @classmethod
    def _moved_to_slo(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None:
            to = {"max_itl_ms": "itl_mean_ms", "max_ttft_p99_ms": "ttft_p99_ms"}[str(info.field_name)]
            raise ValueError(
                f"not read here: latency objectives go in the top-level `slo:` section (slo: {{{to}: {v:g}}})"
            )
        return v


#: The SLO bounds a spec may give (each a latency in ms, judged on the steady-state requests).
SLO_METRICS = ("ttft_p99_ms", "ttft_p50_ms", "itl_p99_ms", "itl_mean_ms", "tpot_p99_ms")

#: The default SLO when a spec has no ``slo:`` section: interactive-chat latency per adapter.
DEFAULT_TTFT_P99_MS = 2000.0
DEFAULT_TPOT_P99_MS = 200.0
#: The load margin solve plans for when ``slo.headroom`` is not given. Plans checked at exactly their
#: load passed the run's own draw and three more, then failed two of three further draws (bundled
#: mixed-ranks-500); one 5 % grid step of margin is what the twin's seed-to-seed noise needs.
DEFAULT_HEADROOM = 0.05
#: Other draws of the window solve checks a plan on when ``solver.check_seeds`` is not given and the
#: spec has an SLO (with ``slo: none``: none, the study's rule judged one draw).
DEFAULT_CHECK_SEEDS = 3


class SloBounds(_Spec):
    """Latency bounds [ms] (steady state). A bound set to ``null`` is not checked; an adapter's or a
    group's own ``slo:`` replaces only the bounds it names."""

    ttft_p99_ms: PosNum | None = Field(default=DEFAULT_TTFT_P99_MS, description="99th percentile time to first token.")
    ttft_p50_ms: PosNum | None = Field(default=None, description="Median time to first token.")
    itl_p99_ms: PosNum | None = Field(default=None, description="99th percentile inter-token latency.")
    itl_mean_ms: PosNum | None = Field(default=None, description="Mean inter-token latency.")
    tpot_p99_ms: PosNum | None = Field(
        default=DEFAULT_TPOT_P99_MS, description="99th percentile time per output token (per request)."
    )

    def bounds(self) -> tuple[tuple[str, float], ...]:
        """The bounds that are checked, as ``(metric, bound)`` in :data:`SLO_METRICS` order."""
        return tuple((m, float(b)) for m in SLO_METRICS if (b := getattr(self, m)) is not None)

    def overridden_by(self, own: SloBounds | None) -> SloBounds:
        """These bounds with those ``own`` names explicitly (a null there removes the bound)."""
        if own is None:
            return self
        return self.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})


class Slo(SloBounds):
    """Service-level objectives every plan must meet in the twin (``slo: none`` disables them)."""

    scope: Literal["adapter", "gpu"] = Field(
        default="adapter",
        description="adapter: every adapter's own requests meet the bounds; gpu: each GPU's requests taken together.",
    )
    warmup_s: PosNum | None = Field(
        default=None,
        description="Requests arriving before this are the start-up transient (default 10 % of the window).",
    )
    headroom: Annotated[float, Strict(), AllowInfNan(False), Field(ge=0, le=4)] | None = Field(
        default=None,
        description="Plan for this much more load: solve's twin check and repair judge the plan at every "
        "adapter's rate x (1 + headroom); the plan is then reported at the stated rates. Default 0.05 "
        "where the workload follows the rates (0 for a trace replayed at a fixed scale): one window's "
        "draw of arrivals moves a per-adapter p99 enough that a plan passing one draw at exactly its "
        "load fails others.",
    )


class SloOverride(SloBounds):
    """An adapter's or a group's own bounds: only the fields it gives replace the scenario's."""

    ttft_p99_ms: PosNum | None = None
    tpot_p99_ms: PosNum | None = None


class SolverOptions(_Spec):
    strategy: Annotated[str, RegisteredName(STRATEGIES)] = "milp"
    backend: Literal["highs", "pulp"] = "highs"
    time_limit_s: PosNum = 60.0
    mip_gap: Fraction = 0.01
    max_gpus: PosInt | None = Field(default=None, description="GPU budget (min_latency needs one).")
    executor: Annotated[str, RegisteredName(EXECUTORS)] = "local"
    ray_address: StrictStr | None = None
    workers: PosInt | None = Field(default=None, description="Parallel twin validations (default: cores).")
    validate_plan: StrictBool = Field(default=True, alias="validate")
    check_seeds: Annotated[int, Strict(), Field(ge=0, le=16)] | None = Field(
        default=None,
        description="Other seeds the twin also checks the plan with (and repairs it under) once it "
        "passes with the run's seed: one window's arrivals are one draw, and a plan that passes one "
        "draw by a hair fails the next. Default 3 under an SLO, 0 with `slo: none` (the study's rule "
        "judged one draw).",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReplicaEntry(_Spec):
    """One replica of an adapter placed on several GPUs: the adapter and the share of its requests this
    GPU receives (the shares of an adapter's entries sum to 1; checked with the whole placement)."""

    name: Name
    share: Num


# The tags are not identifiers: an error's location then never reads them as a field of the spec.
def _placed_tag(v: Any) -> str:
    return "replica-entry" if isinstance(v, (dict, ReplicaEntry)) else "adapter-name"


def _placed_list_tag(v: Any) -> str:
    return "all-adapters" if isinstance(v, str) else "adapter-list"


#: One entry of a GPU's adapters: a bare name, or a ``{name, share}`` replica (told apart by shape, so a
#: wrong entry gets the one error of what it looks like, not one per alternative).
PlacedAdapter = Annotated[
    Union[Annotated[Name, Tag("adapter-name")], Annotated[ReplicaEntry, Tag("replica-entry")]],
    Discriminator(_placed_tag),
]


class PlacementEntry(_Spec):
    """One GPU of a given placement: its slots and its adapters (a name: the adapter's whole traffic;
    ``{name, share}``: a replica receiving that share of it)."""

    gpu_type: StrictStr | None = None
    max_loras: PosInt
    max_cpu_loras: PosInt | None = None
    adapters: Annotated[
        Union[
            Annotated[Literal["all"], Tag("all-adapters")], Annotated[tuple[PlacedAdapter, ...], Tag("adapter-list")]
        ],
        Discriminator(_placed_list_tag),
    ]

    def shares(self, all_names: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
        """(adapter, share) of every entry, ``all`` expanded to ``all_names`` (share 1 for a bare name)."""
        if self.adapters == "all":
            return tuple((n, 1.0) for n in all_names)
        return tuple((a, 1.0) if isinstance(a, str) else (a.name, float(a.share)) for a in self.adapters)


def _none_not_null(schema: dict[str, Any]) -> None:
    """The schema of ``slo``: the word ``none``, not JSON null (which the field refuses)."""
    schema["anyOf"] = [{"const": "none"} if x == {"type": "null"} else x for x in schema.get("anyOf", [])]


class Scenario(_Spec):
    """A complete placement scenario (see the README for an example of every key)."""

    name: Name
    model: Name | ModelArch
    gpu: StrictStr | GpuSpec | None = None
    pool: tuple[PoolEntry, ...] | None = None
    profile: StrictStr | None = Field(default=None, description="Profile JSON overriding the bundled one.")
    workload: Workload = Field(default_factory=Workload)
    adapters: tuple[AdapterItem, ...] = Field(min_length=1)
    serving: Serving = Field(default_factory=Serving)
    constraints: Constraints = Field(default_factory=Constraints)
    objective: Annotated[str, RegisteredName(OBJECTIVES)] = "min_gpus"
    solver: SolverOptions = Field(default_factory=SolverOptions)
    seed: Annotated[int, Strict(), Field(ge=0, lt=2**63)] = 0
    placement: tuple[PlacementEntry, ...] | None = None
    # None is how `slo: none` is held (a nullable field reports one error per problem, a union two);
    # it is written back as "none" so a dumped scenario loads again.
    slo: Slo | None = Field(
        default_factory=Slo,
        description="Latency objectives (default: TTFT p99 ≤ 2000 ms, TPOT p99 ≤ 200 ms per adapter, stable "
        "queue); `none`: the throughput rule of `constraints` alone.",
        json_schema_extra=_none_not_null,
    )

    @field_validator("slo", mode="before")
    @classmethod
    def _slo_none(cls, v: Any) -> Any:
        if v != "none" and not isinstance(v, (dict, Slo)):
            raise ValueError(
                "give a mapping of bounds (e.g. {ttft_p99_ms: 2000}), or `none` for the throughput rule alone"
            )
        return None if v == "none" else v

    @field_serializer("slo")
    def _slo_dump(self, v: Slo | None) -> Any:
        return "none" if v is None else v.model_dump()

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def gpu_types(self) -> tuple[PoolEntry, ...]:
        """The pool, or a one-entry pool built from ``gpu`` (count unbounded for the solver)."""
        if self.pool is not None:
            return self.pool
        assert self.gpu is not None  # guaranteed by semantic_issues
        return (PoolEntry(gpu=self.gpu, count=100_000, cost_per_hour=1.0, profile=self.profile),)

    def rates_scalable(self) -> bool:
        """Whether the workload follows the adapters' rates, so multiplying them scales the load (every
        arrival model but a trace replayed at a fixed scale or assigned other than ``by_rate``)."""
        arrivals = self.workload.arrivals
        if getattr(arrivals, "kind", None) != "trace":
            return True
        return getattr(arrivals, "scale", None) is None and getattr(arrivals, "assignment", "by_rate") == "by_rate"

    def slo_headroom(self) -> float:
        """The extra load solve checks a plan at: ``slo.headroom``, else :data:`DEFAULT_HEADROOM` where
        the rates scale; 0 with ``slo: none`` or a fixed-scale trace."""
        if self.slo is None:
            return 0.0
        if self.slo.headroom is not None:
            return float(self.slo.headroom)
        return DEFAULT_HEADROOM if self.rates_scalable() else 0.0

    def check_seed_count(self) -> int:
        """How many other seeds solve checks a plan on: ``solver.check_seeds``, else
        :data:`DEFAULT_CHECK_SEEDS` under an SLO and 0 with ``slo: none``."""
        n = self.solver.check_seeds
        if n is not None:
            return int(n)
        return DEFAULT_CHECK_SEEDS if self.slo is not None else 0

    def slo_warmup_s(self) -> float:
        """Steady state starts here: ``slo.warmup_s``, else 10 % of the window."""
        w = self.slo.warmup_s if self.slo is not None else None
        return float(w) if w is not None else 0.10 * self.workload.duration_s

    def adapter_slos(self) -> tuple[SloBounds, ...] | None:
        """Every adapter's SLO bounds, in :meth:`adapter_list` order (None with ``slo: none``)."""
        if self.slo is None:
            return None
        base = SloBounds(**{m: getattr(self.slo, m) for m in SLO_METRICS})
        out: list[SloBounds] = []
        for it in self.adapters:
            own = base.overridden_by(it.slo)
            out.extend([own] * (1 if isinstance(it, AdapterEntry) else it.count))
        return tuple(out)

    def adapter_list(self) -> tuple[Adapter, ...]:
        """Every adapter, groups expanded in spec order."""
        return expand_adapters(self.adapters)


def expand_adapters(items: tuple[AdapterEntry | AdapterGroup, ...]) -> tuple[Adapter, ...]:
    """Expand groups into named adapters; Zipf popularity splits ``total_rate_rps`` by 1/i^s."""
    out: list[Adapter] = []
    for it in items:
        if isinstance(it, AdapterEntry):
            out.append(Adapter(name=it.name, rank=it.rank, rate_rps=it.rate_rps))
            continue
        width = max(4, len(str(it.count - 1)))
        if it.total_rate_rps is not None:
            pop = it.popularity or Popularity(kind="uniform")
            # a huge exponent would overflow (i+1)**s: such weights are 0 to double precision anyway
            w = [
                1.0 if pop.kind == "uniform" else (1.0 / (i + 1) ** pop.s if pop.s * math.log(i + 1) < 700.0 else 0.0)
                for i in range(it.count)
            ]
            tot = math.fsum(w)
            rates = [it.total_rate_rps * x / tot for x in w]
        else:
            rates = [float(it.rate_rps or 0.0)] * it.count
        out.extend(Adapter(name=f"{it.group}-{i:0{width}d}", rank=it.rank, rate_rps=r) for i, r in enumerate(rates))
    return tuple(out)

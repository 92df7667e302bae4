"""Per-GPU capacity surrogates: feature schema, sweeps, LightGBM models, MILP encodings.

Public API (import from the sub-modules; nothing heavy is imported here):

* ``features``: ``FEATURE_NAMES`` / ``SCHEMA_VERSION`` / ``feature_row(GpuConfig)`` /
  ``feature_row_from_parts(rates, ranks, max_loras, mean_in, mean_out, arrival_cv, burst_factor)``.
* ``config``: ``GpuConfig``, ``GpuMetrics``, ``ArrivalParams``, ``LengthParams``, ``Evaluator``.
* ``sweep``: ``run_sweep(evaluator, out, SweepDesign, seed, executor)``, ``LocalExecutor``,
  ``RayExecutor``, ``load_dataset`` / ``load_datasets``, ``run_replicate`` (same configurations,
  other twin seeds) / ``pool_replicates`` (seed-mean labels) / ``load_holdouts`` (several held-out
  sweeps as one set); ``twin_eval.TwinEvaluator(profile)``.
* ``physics``: ``Physics`` / ``physics_for(profile)`` — derived features (fluid load, active and slot-holding adapters).
* ``models``: ``train(dataset(s), out_dir, seed, holdout=sweep(s), holdout_replicates=)``, ``ship``,
  ``load_holdout`` / ``holdout_sweeps`` (the shipped held-out rows and their sweeps), ``load_surrogate(path)``,
  ``load_shipped(profile)`` → ``Surrogate`` with ``predict_row`` / ``predict`` /
  ``throughput_row`` / ``starved_row`` / ``predict_many``.
* ``milp_encoding``: ``GbtEncoding`` (exact trees), ``StepEncoding`` + ``step_table`` (exact slice
  over an integer parameter), ``PwlEncoding`` + ``tabulate``, ``one_gpu_capacity``.
* ``cli.app``: the ``optplace surrogate sweep|replicate|train|ship`` sub-commands.
"""

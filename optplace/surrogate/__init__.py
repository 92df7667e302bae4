"""Per-GPU capacity surrogates: feature schema, twin sweeps, LightGBM models, MILP encodings.

Modules by concept (import from them; nothing heavy is imported here):

* ``features``: ``FEATURE_NAMES`` / ``SCHEMA_VERSION`` / ``feature_row(GpuCase)`` /
  ``feature_row_from_parts(rates, ranks, max_loras, mean_in, mean_out, arrival_cv, burst_factor)``.
* ``config``: ``GpuCase``, ``GpuMetrics``, ``ArrivalParams``, ``LengthParams``.
* ``design``: ``SweepDesign``, ``design_config`` (row index → configuration), the replicate rules
  ``noisy_row`` / ``boundary_row``.
* ``execution``: ``run_sweep(evaluator, out, SweepDesign, seed, executor)``, ``run_replicate`` (same
  configurations, other twin seeds), ``LocalExecutor`` / ``RayExecutor``; ``twin_eval.TwinEvaluator(profile)``.
* ``dataset``: ``load_dataset`` / ``load_datasets`` / ``pool_replicates`` (seed-mean labels) /
  ``load_holdouts`` (several held-out sweeps as one set).
* ``provenance``: evaluator identities (twin semantics version, profile hash) and ``same_labels``.
* ``physics``: ``Physics`` / ``physics_for(profile)`` — derived features (fluid load, active and slot-holding adapters).
* ``training``: ``train(dataset(s), out_dir, seed, holdout=sweep(s), holdout_replicates=)``, ``ship``, ``cv_threshold``.
* ``evaluation``: ``smape`` / ``macro_f1`` / ``evaluate``, ``load_holdout`` / ``holdout_sweeps``
  (shipped held-out rows).
* ``runtime`` (what ``solve`` loads; no LightGBM): ``load_surrogate(path)``, ``load_shipped(profile)`` →
  ``Surrogate`` with ``predict_row`` / ``predict`` / ``capacity_row`` / ``predict_many``; ``check_compatible``.
* ``recipe``: a shipped model's recipe (sweeps, replicates, training, held-out sweeps) and ``build_recipe``.
* ``milp_encoding``: ``GbtEncoding`` (exact trees), ``StepEncoding`` + ``step_table`` (exact slice
  over an integer parameter), ``PwlEncoding`` + ``tabulate``, ``one_gpu_capacity``.

The ``optplace surrogate sweep|replicate|train|ship|build`` commands live in ``optplace.app.surrogate_commands``.
"""

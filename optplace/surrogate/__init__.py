"""Per-GPU capacity surrogates: feature schema, sweeps, LightGBM models, MILP encodings."""

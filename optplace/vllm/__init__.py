"""Real vLLM in the loop (optional extra): deploy artefacts, launcher, load generator, metrics, calibration."""

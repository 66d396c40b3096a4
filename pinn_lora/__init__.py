"""pinn_lora: adapt pretrained PINNs to new PDE coefficients with low-rank adapters."""
__version__ = "0.1.0"

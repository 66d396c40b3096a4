"""``python -m pinn_lora.adapt``: adapt a base model to new coefficients. The command lives in :mod:`pinn_lora.cli.adapt`."""
from pinn_lora.cli.adapt import main

if __name__ == "__main__":
    main()

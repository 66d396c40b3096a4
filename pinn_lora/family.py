"""``python -m pinn_lora.family``: adapters over a coefficient range. The command lives in :mod:`pinn_lora.cli.family`."""
from pinn_lora.cli.family import main

if __name__ == "__main__":
    main()

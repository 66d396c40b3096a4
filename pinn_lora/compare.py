"""``python -m pinn_lora.compare``: the report of a directory of runs. The command lives in :mod:`pinn_lora.cli.compare`."""
from pinn_lora.cli.compare import main

if __name__ == "__main__":
    main()

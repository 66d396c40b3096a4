"""``python -m pinn_lora.pretrain``: train a base model. The command lives in :mod:`pinn_lora.cli.pretrain`."""
from pinn_lora.cli.pretrain import main

if __name__ == "__main__":
    main()

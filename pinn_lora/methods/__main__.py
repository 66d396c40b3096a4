"""``python -m pinn_lora.methods``: every registered method, what it is and its options (``--write``/``--check``
docs/methods.md: its generated options block)."""
import sys

from pinn_lora.methods.catalog import main

sys.exit(main())

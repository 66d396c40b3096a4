"""``python -m pinn_lora.methods``: every registered method, what it is and its options."""
from pinn_lora.methods import method_table

print(method_table())

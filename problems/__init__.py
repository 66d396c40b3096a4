"""PDE families shipped with pinn_lora, registered through the
``pinn_lora.problems`` entry-point group. Each module imports only the Problem
base from pinn_lora."""

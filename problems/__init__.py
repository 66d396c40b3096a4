"""PDE families shipped with pinn_lora. The folder is ``problems/`` in the source tree and installs as
``pinn_lora.problems`` (pyproject's ``package-dir``), so a ``problems`` module or package of a user's own
cannot shadow it; the families are registered through the ``pinn_lora.problems`` entry-point group.
Each module imports only the Problem base from pinn_lora."""

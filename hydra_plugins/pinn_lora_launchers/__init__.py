"""pinn_lora's Hydra launchers (``hydra/launcher=slurm`` and ``hydra/launcher=local``): the plugins' own
launchers, except that a sweep waits for all of its jobs, also after one failed or was cancelled, and records
how each one ended (:mod:`pinn_lora.store.sweeps`). Hydra loads launchers from the ``hydra_plugins`` package only."""

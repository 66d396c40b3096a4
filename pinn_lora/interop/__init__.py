"""Interoperability with other PINN libraries."""

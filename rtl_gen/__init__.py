"""Verilog generator of the DLU core: ``dlu gen`` (netlist, manifest, register headers, lint, area)."""

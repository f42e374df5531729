"""The simulated RS-485 bench: buses on pseudo-terminals, meters with physics, faults.

A real peer on the other end of a serial line (``gateway sim``), used by tests,
benchmarks, demos and technician training.
"""

__all__: list[str] = []

"""I/O with meters: serial ports, bus ownership, meter and relay drivers, and profiles."""

__all__: list[str] = []

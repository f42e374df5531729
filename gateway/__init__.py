"""Edge gateway for electricity concentrators, and its master station."""

__version__ = "0.1.0"
__all__ = ["__version__"]

"""One module per ``gateway`` sub-command: ``configure(parser)`` and ``run(args)``."""

__all__: list[str] = []

"""Commands from the master station: signed (Ed25519), expiring, replay-proof.

- :mod:`~gateway.commands.keys`: the master's key pair, signing and verifying.
- :mod:`~gateway.commands.envelope`: the envelope checks, in order (what the gateway
  does while its clock is untrusted is written there).
- :mod:`~gateway.commands.replay`: the ids carried out and their replies (store table
  ``commands``, migration 5).
- :mod:`~gateway.commands.handlers`: the table kind -> handler.
- :mod:`~gateway.commands.service`: :class:`CommandService`, the thread that runs them.
"""

from gateway.commands.handlers import HANDLERS
from gateway.commands.service import CommandService

__all__ = ["HANDLERS", "CommandService"]

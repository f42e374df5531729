"""Relay control (Step 7): trips and closes confirmed by the meter, protect mode, the
quiet policy, the trip-storm guard and reconciliation at restart.

- :mod:`gateway.relays.controller`: :class:`RelayController`, the charger's listener.
- :mod:`gateway.relays.operation`: one meter's trip or close: send, read back, confirm, retry.
- :mod:`gateway.relays.reconcile`: the relays reconciled at restart and after a reload.
- :mod:`gateway.relays.records`: events, remembered positions and alarms.
- :mod:`gateway.relays.targets`: one meter's relay, DL/T 645 or Modbus.
- :mod:`gateway.relays.policy`: quiet hours and quiet holidays.
- :mod:`gateway.relays.storm`: the trip-storm guard.
- :mod:`gateway.relays.memory`: what is remembered in the store (migration 6).
"""

from gateway.relays.controller import RelayController

__all__ = ["RelayController"]

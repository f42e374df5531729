"""One gateway process, wired: configuration -> store writer -> bus threads -> status socket.

::

    with Runtime(load_config("gateway.yaml"), store_path="gw.db") as rt:
        rt.bus_for("A101-shop").submit(ReadJob("A101-shop", (0x00010000,))).result()

Each serial bus gets its meters' drivers (:mod:`gateway.drivers.registry`), a
:class:`~gateway.poller.Poller` and its own thread (:class:`~gateway.drivers.bus.Bus`).
The store (:class:`~gateway.store.store.Store`) journals readings, events and the
gateway's health: it records the start and, at :meth:`Runtime.stop`, a clean stop; a
bus's port lost and back are health records of kind :data:`BUS_HEALTH_KIND`.  Other
services (collection tasks, time sync) use :meth:`Runtime.bus_for`, :attr:`clock`,
:attr:`config` and :attr:`writer`, and may add a section to the status with
:meth:`Runtime.add_status`; ``calendar=True`` attaches them
(:func:`gateway.tasks.attach.attach`), as ``gateway run`` does.  ``uplink=True``
starts the :class:`~gateway.uplink.Uplink` (the journal's batches to the configured
broker; status section ``uplink``), as ``gateway run`` does unless ``--no-uplink``,
and with it the :class:`~gateway.commands.CommandService` (the master's signed commands
from ``down/cmd``, answered on ``up/reply``; status section ``commands``).
With charging and a meter with a relay (the accounts that trip may be opened or changed
by command), the
:class:`~gateway.relays.RelayController` listens to the charger and drives the relays
(``runtime.relays``; status section ``relays``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.drivers.bus import Bus
from gateway.drivers.registry import make_driver
from gateway.poller import Journal, Poller, PollSettings
from gateway.protocols.batch import HealthKind, HealthRecord, MeterEvent
from gateway.status import DEFAULT_SOCKET, StatusServer
from gateway.store.store import Store
from gateway.store.writer import StoreWriter
from gateway.versions import versions

if TYPE_CHECKING:  # imported in start() only when the configuration uses them (memory)
    from gateway.charging import Charger
    from gateway.commands import CommandService
    from gateway.relays import RelayController
    from gateway.tasks.attach import Calendar
    from gateway.uplink import Uplink, UplinkSettings

__all__ = ["BUS_HEALTH_KIND", "STORAGE_HEALTH_INTERVAL", "Runtime"]

_logger = logging.getLogger("gateway")

BUS_HEALTH_KIND = HealthKind.BUS
"""Health record kind of a bus's port events: values ``bus``, ``event`` (``port_lost`` |
``port_restored``) and ``error``."""
STORAGE_HEALTH_INTERVAL = 3600.0
"""Seconds between the store's storage health records (one at start, then hourly)."""


class Runtime:
    """The gateway's core services in one process; :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store_path: str | Path | None = None,
        clock: Clock | None = None,
        settings: PollSettings | None = None,
        status_socket: str | Path | None = DEFAULT_SOCKET,
        reopen_max: float = 5.0,
        calendar: bool = False,
        uplink: bool | UplinkSettings = False,
        charging: bool = False,
        storage_interval: float | None = STORAGE_HEALTH_INTERVAL,
    ) -> None:
        """``uplink``: publish the journal to the configured broker (True, or settings).
        ``charging``: post each billed meter's charges with its reading
        (:class:`~gateway.charging.Charger`; the config's accounts synced first).
        ``storage_interval``: seconds between the store's storage health records."""
        self.config = config
        self.clock: Clock = clock or SystemClock(config.timezone)
        self.settings = settings or PollSettings.from_config(config.polling)
        self.store_path = Path(store_path or config.store.path)
        self.status_socket = Path(status_socket) if status_socket else None
        self.reopen_max = reopen_max
        self.calendar_enabled = calendar
        self.calendar: Calendar | None = None
        self.uplink_settings: UplinkSettings | None = None
        if uplink is True:
            from gateway.uplink import UplinkSettings

            self.uplink_settings = UplinkSettings()
        elif uplink is not False:
            self.uplink_settings = uplink
        self.uplink: Uplink | None = None
        self.commands: CommandService | None = None
        self.charging = charging
        self.storage_interval = storage_interval
        self.charger: Charger | None = None
        self.relays: RelayController | None = None
        self.store: Store | None = None
        self.writer: StoreWriter | None = None
        self.buses: dict[str, Bus] = {}
        self.pollers: dict[str, Poller] = {}
        self._bus_of: dict[str, str] = {}
        self._status_sections: dict[str, Callable[[], object]] = {}
        self._server: StatusServer | None = None
        self._lock = threading.Lock()
        self.started = False

    def now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    # --- life ---------------------------------------------------------------------

    def start(self) -> Runtime:
        store = Store.open(
            self.store_path,
            gateway_id=self.config.gateway_id,
            now_ms=self.now_ms,
            max_bytes=self.config.store.max_bytes,
            storage_interval=self.storage_interval,
            start_info={
                **versions(fastpath=self.charging),
                "config": self.config.source,
                "time_trusted": int(self.clock.trusted),
                "time_source": self.clock.trust_source or "none",
            },
        )
        self.store, self.writer = store, store.writer
        if store.report.unclean_stop:
            _logger.warning("the previous run did not stop cleanly (power loss or crash)")
        try:
            journal: Journal = store.writer
            if self.charging:
                from gateway.charging import Charger
                from gateway.relays import RelayController
                from gateway.relays.targets import targets as relay_targets
                from gateway.store.ledger import Ledger
                from gateway.tariff_updates import load_book
                from gateway.tariff_updates import status as tariff_status

                today = self.clock.now().astimezone(ZoneInfo(self.config.timezone)).date()
                Ledger(store).sync_accounts(
                    self.config.accounts, opened_day=today, opened_ms=self.now_ms()
                ).result()
                book = load_book(store.writer, self.config)  # + versions sent by command
                self.charger = Charger(store.writer, self.config, book, now_ms=self.now_ms)
                journal = self.charger
                self.charger.add_number_listener(self._work_order_swap)
                self.add_status("charging", self.charger.status)
                self.add_status("tariffs", lambda: tariff_status(self.charger, self.clock.now))
                if relay_targets(self.config):  # any meter can trip (accounts may change)
                    self.relays = RelayController(
                        self.config,
                        self.bus_for,
                        store.writer,
                        self.clock,
                        self.charger,
                        store.writer,
                    )
                    self.charger.add_listener(self.relays.on_state)
                    self.add_status("relays", self.relays.status)
                    if store.report.moved_aside is not None:  # balances from zero: no trips
                        self.relays.enter_safe_mode(
                            f"store damaged at start: moved aside to {store.report.moved_aside}"
                        )
            for bus_config in self.config.serial_buses:
                meters = self.config.meters_on(bus_config.name)
                drivers = {m.id: make_driver(m, bus_config) for m in meters}
                poller = Poller(bus_config.name, drivers, journal, self.clock, self.settings)
                bus = Bus(
                    bus_config,
                    drivers,
                    clock=self.clock,
                    scheduler=poller,
                    on_port=self._port_event,
                    reopen_max=self.reopen_max,
                )
                self.buses[bus_config.name] = bus
                self.pollers[bus_config.name] = poller
                for m in meters:
                    self._bus_of[m.id] = bus_config.name
            if self.relays is not None:
                self.relays.start()  # remembered protect first; its read-backs wait for the buses
            for bus in self.buses.values():
                bus.start()
            if self.calendar_enabled:
                from gateway.tasks.attach import attach

                self.calendar = attach(self)
            if self.uplink_settings is not None:
                from gateway.commands import CommandService
                from gateway.uplink import Uplink

                self.commands = CommandService(self, self.config.commands.public_key).start()
                self.add_status("commands", self.commands.status)
                self.uplink = Uplink(
                    store, self.config.uplink, self.uplink_settings, on_command=self.commands.submit
                ).start()
                self.add_status("uplink", self.uplink.status)
            if self.status_socket is not None:
                self._server = StatusServer(self.status_socket, self.status)
                self._server.start()
        except BaseException:
            self.stop("start failed")
            raise
        self.started = True
        _logger.info(
            "gateway %s started: %d buses, %d meters, store %s",
            self.config.gateway_id,
            len(self.buses),
            len(self._bus_of),
            self.store_path,
        )
        return self

    def stop(self, reason: str = "stop") -> None:
        """Stop the buses (after their job in hand), the status socket, then the store."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.commands is not None:
            self.commands.stop()  # the command in hand finishes (it uses the buses, the store)
            self.commands = None
        if self.calendar is not None:
            # no new tick; the one in hand may wait for reads queued behind the polls,
            # which stopping the buses cancels, so it is joined after them
            self.calendar.signal()
        if self.relays is not None:
            self.relays.stop()  # no new relay jobs; those queued are cancelled with the buses
        for bus in self.buses.values():
            bus.stop()
        if self.calendar is not None:
            self.calendar.stop()
            self.calendar = None
        if self.uplink is not None:
            self.uplink.stop()  # it uses the store's writer
            self.uplink = None
        if self.charger is not None:
            self.charger.wait_idle(10.0)  # the readings rated in memory, written
            self.charger.close()
        store = self.store
        if store is not None:
            store.close(reason=reason)
            self.store = None
        if self.started:
            _logger.info("gateway %s stopped (%s)", self.config.gateway_id, reason)
        self.started = False

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- services -----------------------------------------------------------------

    def bus_for(self, meter_id: str) -> Bus:
        """The bus a meter is on (KeyError for an unknown meter)."""
        return self.buses[self._bus_of[meter_id]]

    def _work_order_swap(self, event: MeterEvent) -> None:
        """The charger found a meter's new number to be its work order's: confirmed."""
        poller = self.pollers.get(self._bus_of.get(event.meter, ""))
        if poller is not None and event.meter in poller.meters:
            poller.confirm(event.meter)

    def add_status(self, name: str, section: Callable[[], object]) -> None:
        """Add ``name: section()`` to every status answer (must be JSON-able, quick)."""
        self._status_sections[name] = section

    def _port_event(self, bus: str, up: bool, error: str | None) -> None:
        values: dict[str, int | str] = {"bus": bus, "event": "port_restored" if up else "port_lost"}
        if error:
            values["error"] = error[:200]
        if self.writer is not None:
            self.writer.submit(HealthRecord(self.now_ms(), BUS_HEALTH_KIND, values))

    def status(self) -> dict[str, object]:
        """What ``gateway status`` prints: buses, flagged meters, store, extra sections."""
        buses = []
        for name, bus in self.buses.items():
            entry = dict(bus.status())
            entry["poll"] = self.pollers[name].status()
            buses.append(entry)
        out: dict[str, object] = {
            "gateway_id": self.config.gateway_id,
            "version": __version__,
            "now": self.clock.now().isoformat(),
            "time_trusted": self.clock.trusted,
            "buses": buses,
            "readings_stored": sum(p.readings for p in self.pollers.values()),
        }
        store = self.store
        if store is not None:
            s = store.stats()
            out["store"] = {
                "path": str(self.store_path),
                "records_written": s.records_written,
                "queue_depth": s.queue_depth,
                "failing": s.failing,
                "last_error": s.last_error,
            }
        for name, section in self._status_sections.items():
            try:
                out[name] = section()
            except Exception as exc:  # a broken section must not break the status
                out[name] = {"error": str(exc)}
        return out

    def healthy(self) -> bool:
        """Whether every bus thread and the store writer is alive (feeds the watchdog)."""
        store = self.store
        if not self.started or store is None or not store.writer.stats().alive:
            return False
        return all(bus.alive for bus in self.buses.values())

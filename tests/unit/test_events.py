from __future__ import annotations

from gateway.events import (
    EventBus,
    GatewayEvent,
    InstanceQuarantined,
    QuarantineReason,
)


class _Boom:
    def emit(self, event: GatewayEvent) -> None:
        raise RuntimeError("observer bug")


def test_failing_sink_does_not_stop_other_sinks() -> None:
    bus = EventBus()
    seen: list[GatewayEvent] = []
    bus.subscribe(_Boom())
    bus.subscribe(seen.append)
    event = InstanceQuarantined(route="photos", reason=QuarantineReason.NO_ROUTE)
    bus.emit(event)
    assert seen == [event]

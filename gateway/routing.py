"""Routes: which profile, pixel step and destinations an instance gets. First match wins.

A route's conditions all have to hold (a list of values means any of them); attribute conditions
compare the attribute's value as text (multi-valued attributes match when any value does) or match
a regular expression against it in full. An instance no route matches gets the default route,
which is quarantine unless the configuration names a target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.multival import MultiValue

from gateway.config import AttributePattern, GatewayConfig, RouteConfig, RouteTarget


@dataclass(frozen=True)
class RouteContext:
    """Facts about an instance's arrival that are not in the data set."""

    calling_ae: str = ""
    called_ae: str = ""


@dataclass(frozen=True)
class Route:
    """A matched route (or the default one, named "default")."""

    name: str
    profile: str
    pixels: str
    destinations: tuple[str, ...]


DEFAULT_ROUTE_NAME = "default"


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    value = ds.data_element(keyword).value  # type: ignore[union-attr]
    if value is None:
        return [""]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


class _Condition:
    def __init__(self, keyword: str, spec: str | list[str] | AttributePattern) -> None:
        self.keyword = keyword
        self.regex = re.compile(spec.regex) if isinstance(spec, AttributePattern) else None
        self.allowed = (
            None
            if isinstance(spec, AttributePattern)
            else ({spec} if isinstance(spec, str) else set(spec))
        )

    def holds(self, ds: Dataset) -> bool:
        values = _values(ds, self.keyword)
        if self.regex is not None:
            return any(self.regex.fullmatch(v) for v in values)
        assert self.allowed is not None
        return any(v.strip() in self.allowed for v in values)


class _CompiledRoute:
    def __init__(self, cfg: RouteConfig) -> None:
        self.route = Route(cfg.name, cfg.profile, cfg.pixels, tuple(cfg.destinations))
        m = cfg.match
        self.sop_classes = set(m.sop_class)
        self.modalities = {v.upper() for v in m.modality}
        self.calling = {v.strip() for v in m.calling_ae}
        self.called = {v.strip() for v in m.called_ae}
        self.conditions = [_Condition(k, v) for k, v in m.attributes.items()]

    def matches(self, ds: Dataset, ctx: RouteContext) -> bool:
        if self.sop_classes and str(ds.get("SOPClassUID", "")) not in self.sop_classes:
            return False
        if self.modalities and str(ds.get("Modality", "")).strip().upper() not in self.modalities:
            return False
        if self.calling and ctx.calling_ae not in self.calling:
            return False
        if self.called and ctx.called_ae not in self.called:
            return False
        return all(c.holds(ds) for c in self.conditions)


class Router:
    """Compiled routes from the configuration."""

    def __init__(self, routes: Sequence[RouteConfig], default: RouteTarget | None) -> None:
        self._routes = [_CompiledRoute(r) for r in routes]
        self._by_name = {r.route.name: r.route for r in self._routes}
        self.default = (
            Route(DEFAULT_ROUTE_NAME, default.profile, default.pixels, tuple(default.destinations))
            if default is not None
            else None
        )

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Router:
        default = cfg.default_route if isinstance(cfg.default_route, RouteTarget) else None
        return cls(cfg.routes, default)

    def route(self, ds: Dataset, ctx: RouteContext) -> Route | None:
        """The first matching route, else the default route; None means quarantine."""
        for compiled in self._routes:
            if compiled.matches(ds, ctx):
                return compiled.route
        return self.default

    def by_name(self, name: str) -> Route | None:
        if name == DEFAULT_ROUTE_NAME:
            return self.default
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return [r.route.name for r in self._routes]

    def all_routes(self) -> list[Route]:
        """Every route an instance can take: the configured ones, then the default if any."""
        routes = [r.route for r in self._routes]
        return [*routes, self.default] if self.default is not None else routes

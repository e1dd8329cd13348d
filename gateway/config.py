"""The gateway's configuration: YAML validated into frozen pydantic models at load.

Unknown keys are rejected, and every error names the path of the bad key
(``routes[0].pixels: ...``) so an operator can fix the file without reading code. The secret
project key is never in the YAML: the YAML names a file or an environment variable that holds it.

Relative paths in the YAML are resolved against the working directory the gateway starts in.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deid_core.errors import ConfigError
from deid_core.keys import ProjectKey
from deid_core.options import MUTUALLY_EXCLUSIVE, ProfileOption


class StrictModel(BaseModel):
    """Frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySource(StrictModel):
    """Where the secret project key lives: exactly one of a file or an environment variable."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"

    def load(self, environ: Mapping[str, str] | None = None) -> ProjectKey:
        """Read and validate the key; a missing or short key is a start-up error."""
        if self.env is not None:
            env = os.environ if environ is None else environ
            value = env.get(self.env)
            if not value:
                raise ConfigError(
                    f"project.key: environment variable {self.env} is not set or empty"
                )
            return ProjectKey(value.encode("utf-8"))
        assert self.file is not None
        try:
            material = self.file.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"project.key: key file {self.file} does not exist "
                "(create one with `deid-gateway keygen FILE`)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"project.key: key file {self.file} cannot be read: {exc.strerror}"
            ) from None
        try:
            return ProjectKey(material)
        except ConfigError as exc:
            raise ConfigError(f"project.key: {exc}") from None


class ProjectConfig(StrictModel):
    """One research project: its key and the Clinical Trial attributes written into every output."""

    key: KeySource
    sponsor_name: str | None = None
    protocol_id: str | None = None
    protocol_name: str | None = None


class SiteConfig(StrictModel):
    """This gateway's site within a (possibly federated) project."""

    id: str | None = None
    name: str | None = None


class SafePrivateRule(StrictModel):
    """Private elements kept under Retain Safe Private: keyed by private creator, since the block
    number a creator gets differs between files."""

    creator: str
    #: Element offsets within the block (the low byte of the element number, e.g. 0x10), or "*".
    elements: list[int] | Literal["*"]
    #: Optional group restriction (odd group number, e.g. 0x0019).
    group: int | None = None


class ProfileConfig(StrictModel):
    """A named de-identification profile: the basic profile plus options."""

    options: list[ProfileOption] = Field(default_factory=list)
    safe_private: list[SafePrivateRule] = Field(default_factory=list)

    @field_validator("options")
    @classmethod
    def _compatible(cls, options: list[ProfileOption]) -> list[ProfileOption]:
        for a, b in MUTUALLY_EXCLUSIVE:
            if a in options and b in options:
                raise ValueError(f"options '{a}' and '{b}' cannot be used together")
        if len(set(options)) != len(options):
            raise ValueError("an option is listed twice")
        return options


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class MetricsConfig(StrictModel):
    """The monitoring endpoint: /metrics for Prometheus, /healthz and /readyz for orchestrators.

    Loopback by default: metrics name routes and destinations, which a site may not want on every
    network. In a container, set ``address: 0.0.0.0`` so the scraper and the probes can reach it.
    """

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = Field(default=9477, ge=0, le=65535)

    @field_validator("address")
    @classmethod
    def _bind_address(cls, address: str) -> str:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", address):
                raise ValueError(
                    "must be an IP address (127.0.0.1, 0.0.0.0, ::) or a host name"
                ) from None
        return address


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    version: Literal[1] = 1
    project: ProjectConfig
    site: SiteConfig = SiteConfig()
    profiles: dict[str, ProfileConfig] = Field(default_factory=lambda: {"default": ProfileConfig()})
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    def load_key(self, environ: Mapping[str, str] | None = None) -> ProjectKey:
        return self.project.key.load(environ)


def _format_location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors(include_url=False, include_input=False):
        loc = _format_location(tuple(err["loc"]))
        msg = "unknown key (not allowed here)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML configuration file; errors name the file and the bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(data, str(path))

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
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

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
    #: The pseudonymous patient ID (= Clinical Trial Subject ID) is this prefix + 16 hex digits.
    subject_id_prefix: str = Field(default="SUBJ-", pattern=r"^[A-Za-z0-9_.-]{0,16}$")
    #: Issuer of Patient ID assumed where an instance names none (default: none, the bare ID).
    #: Sites whose Patient IDs are separate namespaces set a distinct value each; sites that
    #: share one (a national ID) leave it unset or set the same value, so their patients link.
    patient_id_issuer: str | None = None
    #: Retain Longitudinal Modified Dates shifts each patient's dates back by 1..N days.
    max_date_shift_days: int = Field(default=3652, ge=1, le=36500)


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
    #: Under retain_safe_private, also keep the shipped list of numeric vendor parameters
    #: (deid_core.private.DEFAULT_SAFE_PRIVATE) besides the rules above.
    default_safe_private: bool = True

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


# --- the gateway node: DICOM listener, storage, destinations, routes -----------------------------

#: Pixel steps a route may name (gateway.pixels); "flowedit" is provided by the FlowEdit engine.
PixelStepName = Literal["none", "quarantine_burned_in", "flowedit"]

_KEYWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class ServerTlsConfig(StrictModel):
    """TLS on the DICOM listener: the node's certificate, and optionally the CA that signs the
    client certificates callers must present."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_client_certs(self) -> ServerTlsConfig:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("require_client_cert needs client_ca_file (the CA that signs them)")
        return self


class ClientTlsConfig(StrictModel):
    """TLS towards a destination: the CA that signs the archive's certificate, and optionally our
    own client certificate when the archive asks for one."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


class AllowedCaller(StrictModel):
    """A calling AE title allowed to associate, optionally only from one host or network."""

    ae_title: str = Field(min_length=1, max_length=16)
    #: An IP address or a CIDR network ("10.1.2.0/24"); absent means from any host.
    host: str | None = None

    @field_validator("host")
    @classmethod
    def _valid_network(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR network: {value!r}") from None
        return value


class NodeConfig(StrictModel):
    """The DICOM listener (SCP) that modalities and PACS send to."""

    ae_title: str = Field(default="DEIDGW", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    #: Refuse associations whose called AE title is not ours.
    check_called_ae: bool = True
    #: Callers allowed to associate; anyone else is rejected at association.
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    #: Accept any calling AE title (for a closed test network only).
    allow_any_caller: bool = False
    max_associations: int = Field(default=16, ge=1)
    #: Largest PDU we accept; a large value lets senders use fewer, larger PDUs.
    max_pdu_size: int = Field(default=262144, ge=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    tls: ServerTlsConfig | None = None
    #: On SIGTERM, how long open associations may go on before they are aborted (an instance
    #: without a success status stays with its sender).
    drain_timeout_s: float = Field(default=30.0, gt=0)


class StorageConfig(StrictModel):
    """Where received, outgoing and quarantined instances and the journal live."""

    spool_dir: Path = Path("var/spool")
    outbox_dir: Path = Path("var/outbox")
    quarantine_dir: Path = Path("var/quarantine")
    journal: Path = Path("var/journal.sqlite")
    #: Refuse new instances (0xA700) once the spool's file system is fuller than this.
    high_water_percent: float = Field(default=90.0, gt=0, le=100)
    #: ... or once less than this many bytes are free there.
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    #: A study is complete once no instance has arrived for this long.
    study_stable_seconds: float = Field(default=30.0, ge=0)
    #: An instance whose processing failed unexpectedly (a bug, a hostile file) this many times,
    #: or crashed the process as often, is quarantined as processing_error. At least 2: after a
    #: crash the first retry of a study goes instance by instance.
    max_processing_attempts: int = Field(default=3, ge=2)
    #: Refuse (0xA700, the sender keeps it) a received instance larger than this: each instance
    #: is held in memory while it is received, and once more while it is de-identified.
    max_instance_bytes: int = Field(default=2 << 30, ge=1 << 20)
    #: A study still arriving is de-identified and forwarded in batches of this many instances
    #: as they come, without waiting for the stable age (the rest follows once the study is
    #: stable), so a long study reaches the archive while it streams in. 0: whole studies only.
    stream_batch: int = Field(default=50, ge=0)


class RetryPolicy(StrictModel):
    """Exponential backoff with jitter between attempts to deliver a batch."""

    max_attempts: int = Field(default=20, ge=1)
    initial_delay_s: float = Field(default=2.0, ge=0)
    max_delay_s: float = Field(default=600.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = Field(default=0.2, ge=0, le=1)


class DestinationConfig(StrictModel):
    """A DICOM archive the gateway forwards to (C-STORE over one association per batch)."""

    #: Absent means "dimse": existing configurations keep working unchanged.
    type: Literal["dimse"] = "dimse"
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    #: Our calling AE title towards this destination (default: the node's AE title).
    calling_ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    tls: ClientTlsConfig | None = None
    retry: RetryPolicy = RetryPolicy()
    #: Most instances sent over one association.
    batch_size: int = Field(default=200, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)


class SecretSource(StrictModel):
    """A secret (token, password) read from a file or an environment variable, never the YAML."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def load(self, where: str, environ: Mapping[str, str] | None = None) -> str:
        """The secret's text (surrounding white space removed); a missing one is a start-up
        error naming `where` and the file or variable, never the value."""
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env, "").strip()
            if not value:
                raise ConfigError(f"{where}: environment variable {self.env} is not set or empty")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{where}: file {self.file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"{where}: file {self.file} cannot be read: {reason}") from None
        if not value:
            raise ConfigError(f"{where}: file {self.file} is empty")
        return value


class BearerAuth(StrictModel):
    """HTTP bearer token (OAuth 2 access token or a static API token)."""

    type: Literal["bearer"]
    token: SecretSource


class BasicAuth(StrictModel):
    """HTTP basic authentication: a user name and a password from a file or the environment."""

    type: Literal["basic"]
    username: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    password: SecretSource


HttpAuth = Annotated[BearerAuth | BasicAuth, Field(discriminator="type")]


class HttpTlsConfig(StrictModel):
    """TLS towards an HTTPS server: the server's certificate is always verified, against this CA
    bundle when given (a site's own CA), otherwise against the system's trusted CAs."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key(self) -> HttpTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DicomwebDestinationConfig(StrictModel):
    """A DICOMweb archive the gateway forwards to: STOW-RS (PS3.18 10.5), one multipart/related
    request of `application/dicom` parts per batch, to ``{url}/studies``."""

    type: Literal["dicomweb"]
    #: The service's base URL, e.g. https://archive.example.org/dicom-web
    url: str
    auth: HttpAuth | None = None
    tls: HttpTlsConfig | None = None
    #: Plain http:// beyond loopback sends images (and credentials) in clear: only on request.
    allow_plain_http: bool = False
    retry: RetryPolicy = RetryPolicy()
    #: Most instances sent in one request.
    batch_size: int = Field(default=50, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Longest wait for the archive's answer to one request (it stores the whole batch first).
    timeout_s: float = Field(default=120.0, gt=0)
    #: Rejected credentials (HTTP 401/403) cannot heal by themselves: after this many attempts a
    #: copy is dead-lettered with the reason, instead of retrying `retry.max_attempts` times.
    auth_failure_attempts: int = Field(default=2, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("the base URL takes no query or fragment")
        if parts.username or parts.password:
            raise ValueError("credentials go in 'auth', not in the URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _plain_http(self) -> DicomwebDestinationConfig:
        parts = urlsplit(self.url)
        if parts.scheme == "http":
            if self.tls is not None:
                raise ValueError("tls is given but the URL is http://; use https://")
            if not self.allow_plain_http and not _is_loopback_host(parts.hostname or ""):
                raise ValueError(
                    "http:// to another host sends images and credentials in clear: use "
                    "https://, or set allow_plain_http: true on a closed network"
                )
        return self


def _destination_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "dimse"))
    return str(getattr(value, "type", "dimse"))


#: A destination of either kind; `type` (default "dimse") says which.
AnyDestination = Annotated[
    Annotated[DestinationConfig, Tag("dimse")]
    | Annotated[DicomwebDestinationConfig, Tag("dicomweb")],
    Discriminator(
        _destination_kind,
        custom_error_type="destination_type",
        custom_error_message="type must be 'dimse' (the default) or 'dicomweb'",
    ),
]
#: Tags pydantic writes into error locations of a tagged union; removed from the paths we print.
_UNION_TAGS = frozenset({"dimse", "dicomweb"})


class SourceConfig(StrictModel):
    """A PACS the gateway pulls from (`deid-gateway pull`): C-FIND at study level, then C-MOVE to
    the gateway's own listener (the PACS must know our AE title, host and port) or C-GET (the
    instances come back on the query's own association).

    The limits protect a clinical PACS: queries are spaced to `max_queries_per_s`, at most
    `max_concurrent_retrieves` studies move at once, and each retrieve is followed by
    `pause_between_studies_s` of rest."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    #: Our calling AE title towards the PACS (default: the node's AE title).
    calling_ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    tls: ClientTlsConfig | None = None
    retrieve: Literal["move", "get"] = "move"
    #: The AE title the PACS sends C-MOVE results to (default: the node's AE title). The PACS
    #: must map it to the gateway listener's host and port.
    move_destination: str | None = Field(default=None, min_length=1, max_length=16)
    #: C-FIND, C-MOVE and C-GET requests per second, at most.
    max_queries_per_s: float = Field(default=2.0, gt=0, le=100)
    max_concurrent_retrieves: int = Field(default=1, ge=1, le=16)
    pause_between_studies_s: float = Field(default=0.0, ge=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    #: Longest silence of the PACS within one operation (a C-MOVE answers after each instance).
    dimse_timeout_s: float = Field(default=120.0, gt=0)


class AttributePattern(StrictModel):
    """Match an attribute's value against a regular expression (Python syntax, full match)."""

    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


AttributeCondition = str | list[str] | AttributePattern


class RouteMatch(StrictModel):
    """Conditions of a route: every condition given must hold; a list means any of its values.
    No condition at all matches everything."""

    sop_class: list[str] = Field(default_factory=list)
    modality: list[str] = Field(default_factory=list)
    calling_ae: list[str] = Field(default_factory=list)
    called_ae: list[str] = Field(default_factory=list)
    #: DICOM keyword -> exact value, list of values, or {regex: ...}.
    attributes: dict[str, AttributeCondition] = Field(default_factory=dict)

    @field_validator("sop_class")
    @classmethod
    def _sop_classes(cls, values: list[str]) -> list[str]:
        from pydicom.uid import UID

        out = []
        for value in values:
            if _UID_RE.match(value):
                out.append(value)
                continue
            uid = _storage_class_uid(value)
            if uid is None:
                raise ValueError(f"not a SOP class UID or a known SOP class keyword: {value!r}")
            out.append(str(UID(uid)))
        return out

    @field_validator("attributes")
    @classmethod
    def _keywords(cls, values: dict[str, AttributeCondition]) -> dict[str, AttributeCondition]:
        from pydicom.datadict import tag_for_keyword

        for keyword in values:
            if not _KEYWORD_RE.match(keyword) or tag_for_keyword(keyword) is None:
                raise ValueError(f"not a DICOM attribute keyword: {keyword!r}")
        return values


def _storage_class_uid(keyword: str) -> str | None:
    """A SOP class UID from its keyword as pynetdicom names it (e.g. CTImageStorage)."""
    from pynetdicom import sop_class

    uid = getattr(sop_class, keyword, None)
    return str(uid) if isinstance(uid, str) else None


class LesionGateConfig(StrictModel):
    """The lesion gate of a `flowedit` route: the lesion mask of the original and of the
    de-identified photograph must overlap (IoU >= threshold), otherwise quarantine.

    `twin`: the mask is where CIELAB a* drops from the image to its counterfactual healthy twin
    (FlowEdit with the twin prompt pair, at `twin_max_side`; both twins in one batch).
    `synthesis_free`: a* against the surrounding skin, no model (CPU-only sites)."""

    method: Literal["twin", "synthesis_free"] = "twin"
    threshold: float = Field(default=0.67, gt=0, le=1)
    #: "pathological -> healthy" prompt pair of the twin (method twin); unset: the defaults of
    #: deid_core.lesion (DEFAULT_LESION_PROMPT, DEFAULT_HEALTHY_PROMPT)
    twin_source_prompt: str | None = Field(default=None, min_length=1)
    twin_target_prompt: str | None = Field(default=None, min_length=1)
    #: twins only feed a mask: edit them at this longer side (a quarter of the cost at 512 for 1024)
    twin_max_side: int = Field(default=512, ge=64)
    #: FlowEdit settings of the twin edit (overrides of the family's published defaults)
    twin_params: dict[str, int | float | str | bool | None] = Field(default_factory=dict)


class FlowEditRouteConfig(StrictModel):
    """The `flowedit` pixel step of a route: the model, the identity edit and the lesion gate.

    The model directory is checked at start-up (every missing piece named); one directory named
    by several routes is loaded once and shared."""

    model: Path
    #: "cpu", "cuda", "cuda:1" ...
    device: str = "cpu"
    #: "auto": bfloat16 on a GPU, float32 on a CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    source_prompt: str = Field(min_length=1)
    target_prompt: str = Field(min_length=1)
    #: FlowEdit settings (num_steps, n_max, n_min, n_avg, source_guidance, target_guidance,
    #: batch_size, max_side, ...): overrides of the model family's published defaults
    params: dict[str, int | float | str | bool | None] = Field(default_factory=dict)
    #: transfer syntax of the derived instance (dicom_io.pixels.ENCODINGS)
    encoding: Literal[
        "explicit", "implicit", "rle", "jpeg2000-lossless", "jpeg2000", "jpeg-baseline"
    ] = "explicit"
    #: free the text encoders (T5-XXL: ~9 GB) once every prompt of the model is encoded
    release_text_encoders: bool = True
    gate: LesionGateConfig = LesionGateConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?|mps", value):
            raise ValueError("must be cpu, cuda, cuda:N or mps")
        return value


def _same_prompt(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


class RouteTarget(StrictModel):
    """What happens to a matched instance: profile, pixel step, destinations."""

    profile: str = "default"
    pixels: PixelStepName = "none"
    destinations: list[str] = Field(min_length=1)
    #: settings of the `flowedit` pixel step (required when pixels is flowedit)
    flowedit: FlowEditRouteConfig | None = None

    @model_validator(mode="after")
    def _flowedit_settings(self) -> RouteTarget:
        if self.pixels == "flowedit" and self.flowedit is None:
            raise ValueError(
                "pixels: flowedit needs a 'flowedit' section (model, source_prompt, target_prompt)"
            )
        if self.pixels != "flowedit" and self.flowedit is not None:
            raise ValueError("a 'flowedit' section is only used with pixels: flowedit")
        if self.flowedit is not None and _same_prompt(
            self.flowedit.source_prompt, self.flowedit.target_prompt
        ):
            # FlowEdit with equal prompts returns the photograph unchanged: no de-identification
            raise ValueError(
                f"route {getattr(self, 'name', 'default')!r}: flowedit source_prompt and "
                "target_prompt are the same, so the edit would leave the photograph unchanged"
            )
        return self


class RouteConfig(RouteTarget):
    """A named routing rule; the first route whose conditions all hold wins."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    match: RouteMatch = RouteMatch()


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


def _bind_address(address: str) -> str:
    """An IP address or a host name to listen on."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", address):
            raise ValueError(
                "must be an IP address (127.0.0.1, 0.0.0.0, ::) or a host name"
            ) from None
    return address


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class ReviewTlsConfig(StrictModel):
    """The review station's certificate and private key (PEM)."""

    cert_file: Path
    key_file: Path


class TrustedHeaderConfig(StrictModel):
    """Identity from a reverse proxy that has already authenticated the user (e.g. oauth2-proxy,
    Apache mod_auth_mellon). The headers are honoured only on connections *from* the listed proxy
    addresses; from anywhere else they are ignored and the request is refused."""

    #: The header carrying the authenticated user name.
    user_header: str = Field(default="X-Forwarded-User", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: The header carrying the user's groups (comma-separated).
    groups_header: str = Field(default="X-Forwarded-Groups", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: Members of any of these groups may decide (reviewer); checked before viewer_groups.
    reviewer_groups: list[str] = Field(default_factory=lambda: ["reviewer"], min_length=1)
    #: Members of any of these groups may see the list and status (viewer).
    viewer_groups: list[str] = Field(default_factory=lambda: ["viewer"])
    #: Addresses (IP or CIDR) of the proxies whose headers are trusted.
    proxies: list[str] = Field(min_length=1)

    @field_validator("proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR network: {value!r}") from None
        return values


class LoginLimitConfig(StrictModel):
    """Failed logins allowed per client address and per user name before logins are refused
    (HTTP 429) for the rest of the window."""

    max_failures: int = Field(default=5, ge=1)
    window_s: float = Field(default=300.0, gt=0)


class ReviewConfig(StrictModel):
    """The review station: a web page where reviewers see and decide on quarantined instances.

    Off by default. With ``auth: password_file`` users log in with a password from `users_file`
    (``deid-gateway review add-user``); with ``auth: trusted_header`` a reverse proxy in front
    authenticates them. TLS is required unless the station listens on loopback only (or sits
    behind a trusted proxy on loopback).
    """

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls: ReviewTlsConfig | None = None
    auth: Literal["password_file", "trusted_header"] = "password_file"
    #: Users, roles and argon2 password hashes (``auth: password_file``).
    users_file: Path = Path("var/review-users")
    trusted_header: TrustedHeaderConfig | None = None
    #: A session ends this long after login, whatever the user does.
    session_lifetime_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    login_limit: LoginLimitConfig = LoginLimitConfig()

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return _bind_address(address)

    @model_validator(mode="after")
    def _auth_and_tls(self) -> ReviewConfig:
        if self.auth == "trusted_header" and self.trusted_header is None:
            raise ValueError(
                "auth trusted_header needs a trusted_header section (at least its proxies)"
            )
        if self.enabled and self.tls is None and not _is_loopback(self.address):
            raise ValueError(
                "tls (cert_file, key_file) is required when the review station listens beyond "
                "loopback: passwords and images would cross the network in clear"
            )
        return self

    @property
    def loopback_only(self) -> bool:
        return _is_loopback(self.address)


class DicomwebInConfig(StrictModel):
    """An optional STOW-RS endpoint (PS3.18 10.5) on the gateway, for senders that speak only
    DICOMweb: ``POST /studies`` (or ``/studies/{StudyInstanceUID}``) with multipart/related
    `application/dicom` parts. Off by default. Success is answered only after every stored
    instance is in the spool and the journal, as for C-STORE.

    Auth and TLS are required unless the endpoint listens on loopback only."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    #: The service's root: senders POST to ``{base_path}/studies``.
    base_path: str = Field(default="/dicom-web", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    tls: ServerTlsConfig | None = None
    auth: HttpAuth | None = None
    #: How the senders appear to routes (`match.calling_ae`) and in the spooled file meta.
    calling_ae_title: str = Field(default="DICOMWEB", min_length=1, max_length=16)
    #: Largest request body accepted (it is buffered on the spool's disk while it is parsed).
    max_request_bytes: int = Field(default=2 << 30, ge=1024)
    #: Requests handled at once; more wait.
    max_concurrent_requests: int = Field(default=4, ge=1, le=64)

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return _bind_address(address)

    @model_validator(mode="after")
    def _secured_beyond_loopback(self) -> DicomwebInConfig:
        if self.enabled and not _is_loopback(self.address):
            if self.tls is None:
                raise ValueError(
                    "tls (cert_file, key_file) is required when the STOW-RS endpoint listens "
                    "beyond loopback: identified images would cross the network in clear"
                )
            if self.auth is None:
                raise ValueError(
                    "auth (bearer or basic) is required when the STOW-RS endpoint listens "
                    "beyond loopback"
                )
        return self


class OrthancForwardTarget(StrictModel):
    """The gateway node an Orthanc plugin in `forward` mode sends stable studies to."""

    ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class OrthancPluginConfig(StrictModel):
    """The Orthanc plugin (gateway/integrations/orthanc_plugin.py): what it does with each
    stable study.

    - ``in_process``: the plugin runs the gateway inside Orthanc (spool, journal, routes,
      de-identification, forwarders, quarantine from this file; no DICOM listener) and hands it
      each instance of the study.
    - ``forward``: Orthanc sends the study (C-STORE, Orthanc's own sender) to a gateway node;
      `forward_to` defaults to this file's `node` (AE title, host, port).
    """

    mode: Literal["in_process", "forward"] = "in_process"
    forward_to: OrthancForwardTarget = OrthancForwardTarget()
    #: How studies handed over in process appear to routes (`match.calling_ae`).
    calling_ae_title: str = Field(default="ORTHANC", min_length=1, max_length=16)
    #: Leave instances alone whose Patient Identity Removed (0012,0062) is YES: among them the
    #: gateway's own output when a route sends it back into this Orthanc (no loop).
    skip_deidentified: bool = True
    #: Which Orthanc instances were already handed over (a small SQLite file).
    state_file: Path = Path("var/orthanc-plugin.sqlite")
    #: forward mode: attempts per study before it is given up (logged as an error).
    max_attempts: int = Field(default=10, ge=1)
    retry_initial_delay_s: float = Field(default=5.0, ge=0)
    retry_max_delay_s: float = Field(default=600.0, ge=0)


class CeleryExecutorConfig(StrictModel):
    """The worker pool over RabbitMQ (executor: celery). Workers (`deid-gateway worker`) take
    pixel-only jobs from `queue` and send each result to the submitting gateway's
    `result_queue`."""

    #: amqp://user:password@host:port/vhost; the password is better given by `broker_url_env`
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    #: environment variable holding the broker URL (wins over broker_url when set)
    broker_url_env: str | None = None
    #: the jobs queue every worker consumes
    queue: str = Field(default="deidgw.pixel-jobs", min_length=1, max_length=200)
    #: this gateway's results queue (default: derived from the node's AE title)
    result_queue: str | None = Field(default=None, min_length=1, max_length=200)
    #: a job whose result has not come back after this long is submitted again
    result_timeout_s: float = Field(default=900.0, gt=0)
    #: submissions of one job before the photograph is quarantined (pixel_step_failed)
    max_attempts: int = Field(default=5, ge=1)
    #: workers announce themselves this often; silent for 3 intervals counts as gone
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    #: waiting after the broker refused a submission before trying again
    retry_delay_s: float = Field(default=2.0, gt=0)

    def url(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        if self.broker_url_env is not None:
            value = env.get(self.broker_url_env)
            if not value:
                raise ConfigError(
                    f"executor.broker_url_env: environment variable {self.broker_url_env} "
                    "is not set or empty"
                )
            return value
        return self.broker_url


class ExecutorConfig(CeleryExecutorConfig):
    """Where the pixel work of photograph routes runs.

    `local` (default): in the gateway process, the model loaded once, several waiting photographs
    edited per batch. `celery`: on `deid-gateway worker` processes (GPU machines) over RabbitMQ.
    `executor: local` and `executor: celery` are shorthands for `{kind: ...}`."""

    kind: Literal["local", "celery"] = "local"
    #: photographs edited together in one batch (local executor)
    batch_size: int = Field(default=4, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data


class GatewayConfig(StrictModel):
    """The whole configuration file."""

    version: Literal[1] = 1
    project: ProjectConfig
    site: SiteConfig = SiteConfig()
    profiles: dict[str, ProfileConfig] = Field(default_factory=lambda: {"default": ProfileConfig()})
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    review: ReviewConfig = ReviewConfig()
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    destinations: dict[str, AnyDestination] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    #: PACS to pull from (`deid-gateway pull --source NAME`).
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    dicomweb_in: DicomwebInConfig = DicomwebInConfig()
    orthanc_plugin: OrthancPluginConfig = OrthancPluginConfig()
    #: What happens to an instance no route matches: "quarantine" (the default), or a target.
    default_route: Literal["quarantine"] | RouteTarget = "quarantine"
    executor: ExecutorConfig = ExecutorConfig()

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        names: set[str] = set()
        targets: list[tuple[str, RouteTarget]] = []
        for i, route in enumerate(self.routes):
            if route.name in names:
                raise ValueError(f"routes[{i}].name: route name {route.name!r} is used twice")
            names.add(route.name)
            targets.append((f"routes[{i}]", route))
        if isinstance(self.default_route, RouteTarget):
            targets.append(("default_route", self.default_route))
        for where, target in targets:
            if target.profile not in self.profiles:
                raise ValueError(f"{where}.profile: no profile named {target.profile!r}")
            for dest in target.destinations:
                if dest not in self.destinations:
                    raise ValueError(f"{where}.destinations: no destination named {dest!r}")
        for name, source in self.sources.items():
            if source.retrieve == "move" and not self.node.allow_any_caller:
                callers = {c.ae_title for c in self.node.allowed_callers}
                if source.ae_title not in callers:
                    raise ValueError(
                        f"sources.{name}: the PACS delivers a C-MOVE by associating with our "
                        f"listener as {source.ae_title!r}; add it to node.allowed_callers "
                        "(or use retrieve: get)"
                    )
        return self

    def dimse_destinations(self) -> dict[str, DestinationConfig]:
        return {n: d for n, d in self.destinations.items() if isinstance(d, DestinationConfig)}

    def load_key(self, environ: Mapping[str, str] | None = None) -> ProjectKey:
        return self.project.key.load(environ)


def _format_location(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 2 and loc[0] == "destinations" and loc[2] in _UNION_TAGS:
        loc = loc[:2] + loc[3:]  # the union's tag, not a key of the file
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

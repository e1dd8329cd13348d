"""Pixel jobs: the only thing a photograph's pixel work needs, and the only thing that leaves the
gateway when that work runs on a worker pool.

A job holds the decoded frames (uint8 RGB), the route's name (the worker has the same route
configuration and models) and the noise seeds (derived from the project key at the gateway; the
key itself never travels). No attribute of the data set, no UID, no name: the worker cannot tell
whose photograph it edits. A result holds the edited frames, or the gate's rejection with its
figures and QA artifacts, or a failure.

On the wire both are plain mappings of numbers, text and bytes, serialised with MessagePack
(`encode`/`decode`; Celery and kombu are told `msgpack` and accept nothing else). No pickle: a
worker or a gateway that decodes a message runs no code from it. Pixel arrays travel as their raw
bytes with shape and dtype beside (JSON would need base64: measured 70-100 ms per 1024x1024
photograph each way here, against 6 ms for MessagePack), checked on decoding against size limits,
so a malformed or hostile message is an `InvalidInputError`, never an allocation of arbitrary size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from deid_core.errors import InvalidInputError

WIRE_VERSION = 1
#: Largest photograph accepted in a job: 64 megapixels over all frames.
MAX_PIXELS = 64 * 1024 * 1024
#: Largest artifact (PNG) in a result.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
_MAX_SEED = 2**64 - 1

ResultStatus = Literal["accepted", "rejected", "failed"]


@dataclass(frozen=True)
class PixelJob:
    #: the gateway's id of the job (random; the journal maps it to the instance)
    job_id: str
    route: str
    #: (frames, rows, columns, 3) uint8 RGB
    frames: np.ndarray
    #: noise seed of the identity edit, per frame
    seeds: tuple[int, ...]
    #: noise seed of the healthy twins of the lesion gate, per frame
    twin_seeds: tuple[int, ...]
    #: where the result goes (the submitting gateway's results queue; "" in process)
    reply_to: str = ""
    #: 1 for the first submission, counted up by each re-submission
    attempt: int = 1

    def __post_init__(self) -> None:
        _check_frames(self.frames, "job frames")
        n = self.frames.shape[0]
        for name in ("seeds", "twin_seeds"):
            seeds = getattr(self, name)
            if len(seeds) != n or not all(_is_seed(s) for s in seeds):
                raise InvalidInputError(f"pixel job: {name} must be {n} integers in [0, 2**64)")


@dataclass(frozen=True)
class PixelResult:
    job_id: str
    route: str
    status: ResultStatus
    #: edited frames (accepted only), same shape as the job's
    frames: np.ndarray | None = None
    #: the gate's outcome ("accepted", "no_lesion_found", or a quarantine reason), or for a
    #: failure its kind (an exception type name)
    reason: str = ""
    #: figures for logs and quarantine entries (IoU, mask fractions, seconds): never PHI
    details: Mapping[str, float | int | str] = field(default_factory=dict)
    #: file name -> bytes kept with a quarantine entry (QA panel, original and edited PNG)
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    #: Derivation Description of the edit (model identity, FlowEdit settings, test-model notice)
    provenance: str = ""
    #: made by a test model (random weights): said in the output's De-identification Method
    test_model: bool = False
    #: a failure that another attempt may not repeat (worker out of memory, lost device)
    retryable: bool = False
    #: which worker did it (host name and pid; for logs)
    worker: str = ""
    #: seconds of model work on this job's frames: the edit, and the lesion gate (with twins)
    edit_seconds: float = 0.0
    gate_seconds: float = 0.0

    @property
    def model_seconds(self) -> float:
        return self.edit_seconds + self.gate_seconds

    def __post_init__(self) -> None:
        if self.status not in ("accepted", "rejected", "failed"):
            raise InvalidInputError(f"pixel result: unknown status {self.status!r}")
        if self.status == "accepted":
            if self.frames is None:
                raise InvalidInputError("pixel result: an accepted result carries its frames")
            _check_frames(self.frames, "result frames")


def _is_seed(value: Any) -> bool:
    return (
        isinstance(value, int | np.integer)
        and not isinstance(value, bool)
        and 0 <= int(value) <= _MAX_SEED
    )


def _check_frames(frames: Any, what: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise InvalidInputError(f"pixel job: {what} must be a uint8 array")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) < 1:
        raise InvalidInputError(f"pixel job: {what} must have shape (frames, rows, columns, 3)")
    if frames.size > 3 * MAX_PIXELS:
        raise InvalidInputError(f"pixel job: {what} exceed {MAX_PIXELS} pixels")


# --- the wire format -----------------------------------------------------------------------------


#: The serialiser of pixel messages (kombu's name for it).
SERIALIZER = "msgpack"


def encode(obj: Mapping[str, Any]) -> bytes:
    """A wire mapping as MessagePack bytes (bytes stay binary)."""
    import msgpack

    return bytes(msgpack.packb(obj, use_bin_type=True))


def decode(data: bytes) -> Any:
    """MessagePack bytes back to a wire mapping; InvalidInputError when they are not."""
    import msgpack

    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types on corrupt input
        raise InvalidInputError(f"pixel message: not MessagePack ({type(exc).__name__})") from None


def _array_to_wire(frames: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(frames)
    return {"shape": list(data.shape), "dtype": "uint8", "data": data.tobytes()}


def _array_from_wire(obj: Any, what: str) -> np.ndarray:
    if not isinstance(obj, dict) or obj.get("dtype") != "uint8":
        raise InvalidInputError(f"pixel message: {what} is not a uint8 array")
    shape = obj.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        or shape[3] != 3
    ):
        raise InvalidInputError(f"pixel message: {what} has no valid (F, H, W, 3) shape")
    count = shape[0] * shape[1] * shape[2] * 3
    if count > 3 * MAX_PIXELS:
        raise InvalidInputError(f"pixel message: {what} exceed {MAX_PIXELS} pixels")
    raw = obj.get("data")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidInputError(f"pixel message: {what} are not bytes")
    if len(raw) != count:
        raise InvalidInputError(f"pixel message: {what} do not match their shape")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()


def _text(obj: Mapping[str, Any], name: str, max_len: int = 256, default: str | None = None) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidInputError(f"pixel message: {name} must be text of at most {max_len}")
    return value


def job_to_wire(job: PixelJob) -> dict[str, Any]:
    return {
        "v": WIRE_VERSION,
        "kind": "pixel-job",
        "job_id": job.job_id,
        "route": job.route,
        "frames": _array_to_wire(job.frames),
        "seeds": [int(s) for s in job.seeds],
        "twin_seeds": [int(s) for s in job.twin_seeds],
        "reply_to": job.reply_to,
        "attempt": job.attempt,
    }


def job_from_wire(obj: Any) -> PixelJob:
    if not isinstance(obj, dict) or obj.get("kind") != "pixel-job":
        raise InvalidInputError("pixel message: not a pixel job")
    if obj.get("v") != WIRE_VERSION:
        raise InvalidInputError(f"pixel message: wire version {obj.get('v')!r} is not supported")
    attempt = obj.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise InvalidInputError("pixel message: attempt must be a positive integer")
    seeds, twin_seeds = obj.get("seeds"), obj.get("twin_seeds")
    if not isinstance(seeds, list) or not isinstance(twin_seeds, list):
        raise InvalidInputError("pixel message: seeds must be lists of integers")
    return PixelJob(
        job_id=_text(obj, "job_id", 64),
        route=_text(obj, "route", 64),
        frames=_array_from_wire(obj.get("frames"), "frames"),
        seeds=tuple(seeds),
        twin_seeds=tuple(twin_seeds),
        reply_to=_text(obj, "reply_to", 255, ""),
        attempt=attempt,
    )


def result_to_wire(result: PixelResult) -> dict[str, Any]:
    return {
        "v": WIRE_VERSION,
        "kind": "pixel-result",
        "job_id": result.job_id,
        "route": result.route,
        "status": result.status,
        "frames": None if result.frames is None else _array_to_wire(result.frames),
        "reason": result.reason,
        "details": dict(result.details),
        "artifacts": {name: bytes(data) for name, data in result.artifacts.items()},
        "provenance": result.provenance,
        "test_model": result.test_model,
        "retryable": result.retryable,
        "worker": result.worker,
        "edit_seconds": result.edit_seconds,
        "gate_seconds": result.gate_seconds,
    }


def result_from_wire(obj: Any) -> PixelResult:
    if not isinstance(obj, dict) or obj.get("kind") != "pixel-result":
        raise InvalidInputError("pixel message: not a pixel result")
    if obj.get("v") != WIRE_VERSION:
        raise InvalidInputError(f"pixel message: wire version {obj.get('v')!r} is not supported")
    details = obj.get("details", {})
    if not isinstance(details, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float | str) for k, v in details.items()
    ):
        raise InvalidInputError("pixel message: details must map names to numbers or text")
    artifacts: dict[str, bytes] = {}
    raw_artifacts = obj.get("artifacts", {})
    if not isinstance(raw_artifacts, dict):
        raise InvalidInputError("pixel message: artifacts must map file names to bytes")
    for name, data in raw_artifacts.items():
        if (
            not isinstance(name, str)
            or not isinstance(data, bytes)
            or not name
            or "/" in name
            or "\\" in name
            or name.startswith(".")
            or len(data) > MAX_ARTIFACT_BYTES
        ):
            raise InvalidInputError("pixel message: an artifact has a bad name or size")
        artifacts[name] = data
    frames = obj.get("frames")
    seconds = [obj.get(name, 0.0) for name in ("edit_seconds", "gate_seconds")]
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in seconds):
        raise InvalidInputError("pixel message: edit_seconds and gate_seconds must be numbers")
    return PixelResult(
        job_id=_text(obj, "job_id", 64),
        route=_text(obj, "route", 64),
        status=_text(obj, "status", 16),  # type: ignore[arg-type]
        frames=None if frames is None else _array_from_wire(frames, "result frames"),
        reason=_text(obj, "reason", 128, ""),
        details=details,
        artifacts=artifacts,
        provenance=_text(obj, "provenance", 1024, ""),
        test_model=bool(obj.get("test_model", False)),
        retryable=bool(obj.get("retryable", False)),
        worker=_text(obj, "worker", 255, ""),
        edit_seconds=float(seconds[0]),
        gate_seconds=float(seconds[1]),
    )

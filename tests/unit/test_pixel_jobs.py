"""Pixel jobs on the wire: pixels and seeds only, MessagePack only, and hostile messages
refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from deid_core.errors import InvalidInputError
from gateway.pixel_jobs import (
    PixelJob,
    PixelResult,
    decode,
    encode,
    job_from_wire,
    job_to_wire,
    result_from_wire,
    result_to_wire,
)


def _job(frames: int = 2) -> PixelJob:
    rng = np.random.default_rng(0)
    return PixelJob(
        job_id="j1",
        route="photos",
        frames=rng.integers(0, 256, (frames, 5, 7, 3), dtype=np.uint8),
        seeds=tuple(range(frames)),
        twin_seeds=tuple(2**63 + i for i in range(frames)),
        reply_to="deidgw.results.SITE",
        attempt=2,
    )


def test_job_round_trips_through_messagepack() -> None:
    job = _job()
    message = encode(job_to_wire(job))
    assert len(message) < job.frames.nbytes + 300  # the pixels travel as bytes, not base64
    wire = decode(message)
    back = job_from_wire(wire)
    assert np.array_equal(back.frames, job.frames)
    assert (back.job_id, back.route, back.seeds, back.twin_seeds) == (
        job.job_id,
        job.route,
        job.seeds,
        job.twin_seeds,
    )
    assert (back.reply_to, back.attempt) == (job.reply_to, job.attempt)


def test_job_carries_nothing_but_pixels_route_and_seeds() -> None:
    assert set(job_to_wire(_job())) == {
        "v",
        "kind",
        "job_id",
        "route",
        "frames",
        "seeds",
        "twin_seeds",
        "reply_to",
        "attempt",
    }


def test_result_round_trips_with_artifacts() -> None:
    job = _job(1)
    result = PixelResult(
        job_id="j1",
        route="photos",
        status="rejected",
        reason="lesion_vanished",
        details={"iou": 0.0, "frames": 1},
        artifacts={"panel.png": b"\x89PNG...", "original.png": b"\x00\x01"},
        provenance="FlowEdit ...",
        test_model=True,
        worker="host:1",
        edit_seconds=1.5,
        gate_seconds=0.25,
    )
    back = result_from_wire(decode(encode(result_to_wire(result))))
    assert back == result
    accepted = PixelResult(job_id="j1", route="photos", status="accepted", frames=job.frames)
    again = result_from_wire(decode(encode(result_to_wire(accepted))))
    assert again.frames is not None and np.array_equal(again.frames, job.frames)
    assert again.model_seconds == 0.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w: w.update(kind="other"), "not a pixel job"),
        (lambda w: w.update(v=99), "wire version"),
        (lambda w: w["frames"].update(dtype="float64"), "uint8"),
        (lambda w: w["frames"].update(shape=[1, 5, 7, 4]), "shape"),
        (lambda w: w["frames"].update(shape=[2, 5, 7, 3.0]), "shape"),
        (lambda w: w["frames"].update(shape=[2, 5, 8, 3]), "do not match"),
        (lambda w: w["frames"].update(shape=[4096, 4096, 4096, 3]), "exceed"),
        (lambda w: w["frames"].update(data="x" * len(w["frames"]["data"])), "not bytes"),
        (lambda w: w["frames"].update(data=w["frames"]["data"][:-1]), "do not match"),
        (lambda w: w.update(seeds=[1]), "seeds"),
        (lambda w: w.update(seeds=[-1, 2]), "seeds"),
        (lambda w: w.update(seeds=[True, 2]), "seeds"),
        (lambda w: w.update(attempt=0), "attempt"),
        (lambda w: w.update(route="x" * 65), "route"),
    ],
)
def test_malformed_job_is_refused(change, match: str) -> None:  # type: ignore[no-untyped-def]
    wire = job_to_wire(_job())
    change(wire)
    with pytest.raises(InvalidInputError, match=match):
        job_from_wire(wire)


def test_a_pickle_is_never_unpickled() -> None:
    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, ("raise SystemExit('pickle ran')",))

    wire = job_to_wire(_job(1))
    wire["frames"]["data"] = pickle.dumps(Boom())
    with pytest.raises(InvalidInputError):
        job_from_wire(decode(encode(wire)))
    with pytest.raises(InvalidInputError, match="not MessagePack"):
        decode(pickle.dumps(Boom()))


@pytest.mark.parametrize("name", ["../escape.png", ".hidden", "", "a/b.png", "a\\b.png"])
def test_result_artifact_names_cannot_leave_the_entry_folder(name: str) -> None:
    wire = result_to_wire(PixelResult(job_id="j", route="r", status="rejected", reason="x"))
    wire["artifacts"] = {name: b"x"}
    with pytest.raises(InvalidInputError, match="artifact"):
        result_from_wire(wire)


def test_accepted_result_without_frames_is_refused() -> None:
    wire = result_to_wire(PixelResult(job_id="j", route="r", status="rejected"))
    wire["status"] = "accepted"
    with pytest.raises(InvalidInputError, match="frames"):
        result_from_wire(wire)

"""Configuration of photograph routes and executors: clear start-up errors, no model needed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deid_core.errors import ConfigError
from gateway.config import parse_config
from gateway.executors import default_result_queue
from gateway.photo import flowedit_routes, verify_models
from gateway.workerpool import WorkerHeartbeats
from tests.support.photos import photo_route


def _cfg(routes: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    data = {
        "project": {"key": {"env": "KEY"}},
        "destinations": {"archive": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
        "routes": routes,
        **extra,
    }
    return parse_config(data, "site.yaml")


def test_flowedit_route_needs_its_settings() -> None:
    route = {"name": "photos", "pixels": "flowedit", "destinations": ["archive"]}
    with pytest.raises(ConfigError, match=r"routes\[0\]: .*flowedit needs a 'flowedit' section"):
        _cfg([route])


def test_flowedit_settings_only_with_flowedit(tmp_path: Path) -> None:
    route = photo_route(tmp_path, ["archive"])
    route["pixels"] = "none"
    with pytest.raises(ConfigError, match="only used with pixels: flowedit"):
        _cfg([route])


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("device",), "gpu0", "cpu, cuda, cuda:N"),
        (("dtype",), "int8", "dtype"),
        (("encoding",), "jpeg-ls", "encoding"),
        (("gate", "threshold"), 1.5, "threshold"),
        (("gate", "method"), "magic", "method"),
        (("source_prompt",), "", "source_prompt"),
    ],
)
def test_bad_flowedit_settings_name_their_key(
    tmp_path: Path, path: tuple[str, ...], value: object, match: str
) -> None:
    route = photo_route(tmp_path, ["archive"])
    section = route["flowedit"]
    for part in path[:-1]:
        section = section[part]  # type: ignore[index]
    section[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ConfigError, match=match) as info:
        _cfg([route])
    assert "routes[0].flowedit" in str(info.value)


@pytest.mark.parametrize("target", ["same words", "  Same   WORDS "])
def test_identical_prompts_are_a_configuration_error_naming_the_route(
    tmp_path: Path, target: str
) -> None:
    """Equal prompts make FlowEdit an identity map: the photograph would leave unchanged."""
    route = photo_route(tmp_path, ["archive"], name="derm-photos")
    route["flowedit"]["source_prompt"] = "same words"  # type: ignore[index]
    route["flowedit"]["target_prompt"] = target  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"'derm-photos'.*leave the photograph unchanged"):
        _cfg([route])
    default = photo_route(tmp_path, ["archive"])
    del default["name"]
    default["flowedit"]["target_prompt"] = "same words"  # type: ignore[index]
    default["flowedit"]["source_prompt"] = "same words"  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"'default'.*unchanged"):
        _cfg([], default_route={k: v for k, v in default.items() if k != "match"})


def test_missing_model_directory_is_named_per_route(tmp_path: Path) -> None:
    cfg = _cfg(
        [
            photo_route(tmp_path / "absent", ["archive"], name="derm"),
            photo_route(tmp_path / "absent-too", ["archive"], name="wounds"),
        ]
    )
    with pytest.raises(ConfigError) as info:
        verify_models(cfg)
    text = str(info.value)
    assert "routes[0].flowedit.model" in text and "routes[1].flowedit.model" in text
    assert "absent-too" in text


def test_incomplete_model_directory_names_what_is_missing(tmp_path: Path) -> None:
    model = tmp_path / "sd3"
    model.mkdir()
    (model / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "X"]}'
    )
    cfg = _cfg([photo_route(model, ["archive"])])
    with pytest.raises(ConfigError, match="transformer"):
        verify_models(cfg)


def test_default_route_can_run_flowedit(tmp_path: Path) -> None:
    target = photo_route(tmp_path, ["archive"])
    target.pop("name")
    target.pop("match")
    cfg = _cfg([], default_route=target)
    assert list(flowedit_routes(cfg)) == ["default"]


def test_executor_shorthand_and_result_queue_per_gateway() -> None:
    assert _cfg([]).executor.kind == "local"
    cfg = _cfg([], executor="celery", site={"id": "SITE-A"})
    assert cfg.executor.kind == "celery"
    assert default_result_queue(cfg) == "deidgw.results.SITE-A.DEIDGW"
    explicit = _cfg([], executor={"kind": "celery", "result_queue": "mine"})
    assert default_result_queue(explicit) == "mine"
    with pytest.raises(ConfigError, match=r"executor\.kind"):
        _cfg([], executor="gpu")
    with pytest.raises(ConfigError, match=r"executor\.result_timeout_s"):
        _cfg([], executor={"kind": "celery", "result_timeout_s": 0})


def test_broker_url_from_the_environment() -> None:
    cfg = _cfg([], executor={"kind": "celery", "broker_url_env": "DEIDGW_BROKER"})
    assert cfg.executor.url({"DEIDGW_BROKER": "amqp://u:p@broker:5672//"}).startswith("amqp://u")
    with pytest.raises(ConfigError, match="DEIDGW_BROKER is not set"):
        cfg.executor.url({})


def test_heartbeats_count_workers_heard_recently() -> None:
    beats = WorkerHeartbeats(interval_s=1.0)
    assert beats.workers_alive() == 0 and beats.last_heartbeat() is None
    now = time.time()
    beats.beat("w1", now)
    beats.beat("w2", now - 2.5)
    beats.beat("w3", now - 10)  # gone: silent for more than three intervals
    assert beats.workers_alive() == 2
    assert beats.last_heartbeat() == now

"""The review station's application through its HTTP interface, in process (Starlette's test
client; no sockets): sign-in, roles, CSRF, decisions and their records, headers, trusted proxy."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from starlette.testclient import TestClient

from gateway.events import QuarantineReason
from gateway.node import Storage
from gateway.review.audit import read_audit
from gateway.review.identity import SessionCodec
from gateway.review.station import ReviewStation
from gateway.review.users import remove_user
from tests.support.gateway import config_dict, destination, make_key_file, parse
from tests.support.review import (
    REVIEWER,
    VIEWER,
    burned_in_ct,
    photo_artifacts,
    write_photo_instance,
    write_users,
)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _config(tmp_path: Path, **review: Any) -> Any:
    users = write_users(tmp_path / "users")
    return parse(
        config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={"archive": destination("127.0.0.1", 4242, "ARCHIVE")},
            routes=[
                {"name": "photos", "match": {"modality": ["XC"]}, "destinations": ["archive"]},
                {"name": "radiology", "match": {"modality": ["CT"]}, "destinations": ["archive"]},
            ],
            review={"enabled": True, "port": 0, "users_file": str(users), **review},
        )
    )


class Desk:
    """A station (not listening), its storage, and quarantine entries made through the real
    quarantine API: a photograph the lesion gate rejected, a burned-in CT, an unrouted one."""

    def __init__(self, tmp_path: Path, **review: Any) -> None:
        self.cfg = _config(tmp_path, **review)
        self.storage = Storage.open(self.cfg)
        self.station = ReviewStation(self.cfg, self.storage)
        q, j = self.storage.quarantine, self.storage.journal
        photo = write_photo_instance(tmp_path / "photo.dcm")
        assert photo.PatientName == "TEST^IDENTIFIABLE"
        artifacts, details = photo_artifacts()
        self.photo = q.put(
            instance_id=j.add_received("a/1.dcm", "p" * 64),
            data=(tmp_path / "photo.dcm").read_bytes(),
            reason=QuarantineReason.LESION_IOU_BELOW_THRESHOLD,
            route="photos",
            study_key="p" * 64,
            details=details,
            artifacts=artifacts,
        )
        self.ct = q.put(
            instance_id=j.add_received("a/2.dcm", "c" * 64),
            data=burned_in_ct(tmp_path / "ct.dcm"),
            reason=QuarantineReason.BURNED_IN_ANNOTATION,
            route="radiology",
            study_key="c" * 64,
            details={"BurnedInAnnotation": "YES"},
        )
        plan = get_testdata_file("rtplan.dcm", download=False)
        assert plan is not None
        self.unrouted = q.put(
            instance_id=j.add_received("a/3.dcm", "u" * 64),
            data=Path(plan).read_bytes(),
            reason=QuarantineReason.NO_ROUTE,
            route="",
            study_key="u" * 64,
        )

    def client(self, **kw: Any) -> TestClient:
        return TestClient(self.station.app, follow_redirects=False, **kw)

    def signed_in(self, who: tuple[str, str], **kw: Any) -> TestClient:
        client = self.client(**kw)
        response = sign_in(client, *who)
        assert response.status_code == 303, response.text
        return client

    def audit(self) -> list[Any]:
        return read_audit(self.station.reader)


def sign_in(client: TestClient, name: str, password: str, next_: str = "") -> Any:
    form = client.get("/login" + (f"?next={next_}" if next_ else ""))
    assert form.status_code == 200
    token = CSRF.search(form.text)
    assert token is not None
    data = {"csrf": token.group(1), "username": name, "password": password}
    if next_:
        data["next"] = next_
    return client.post("/login", data=data)


def csrf_of(client: TestClient, path: str = "/quarantine") -> str:
    match = CSRF.search(client.get(path).text)
    assert match is not None
    return match.group(1)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk(tmp_path)
    yield d
    d.storage.close()


# --- signing in ----------------------------------------------------------------------------------


def test_pages_ask_to_sign_in_and_images_and_actions_are_refused(desk: Desk) -> None:
    client = desk.client()
    response = client.get("/quarantine")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fquarantine"
    assert client.get("/status").status_code == 303
    assert client.get(f"/quarantine/{desk.photo}/files/panel.png").status_code == 401
    assert client.get(f"/quarantine/{desk.ct}/instance.png").status_code == 401
    assert (
        client.post(f"/quarantine/{desk.photo}/release", data={"why": "x" * 9}).status_code == 401
    )
    assert client.get("/audit.csv").status_code == 401


def test_sign_in_sets_a_strict_http_only_session_cookie(desk: Desk) -> None:
    client = desk.client()
    response = sign_in(client, *REVIEWER, next_="/status")
    assert response.status_code == 303
    assert response.headers["location"] == "/status"
    cookie = next(c for c in response.headers.get_list("set-cookie") if "review_session=" in c)
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/" in attributes
    assert "max-age=3600" in attributes
    assert "secure" not in attributes  # plain HTTP on loopback: a Secure cookie would be dropped
    assert client.get("/quarantine").status_code == 200
    assert [r.action for r in desk.audit()] == ["login"]


def test_under_tls_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    desk = Desk(tmp_path, tls={"cert_file": "unused.crt", "key_file": "unused.key"})
    try:
        client = desk.client(base_url="https://testserver")
        response = sign_in(client, *REVIEWER)
        cookie = next(c for c in response.headers.get_list("set-cookie") if "__Host-review=" in c)
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes
        assert not any(a.startswith("domain") for a in attributes)
    finally:
        desk.storage.close()


def test_after_sign_in_only_same_site_paths_are_followed(desk: Desk) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = sign_in(desk.client(), *REVIEWER, next_=target)
        assert response.headers["location"] == "/quarantine"


def test_wrong_passwords_are_throttled_and_audited_without_guessed_names(desk: Desk) -> None:
    client = desk.client()
    assert sign_in(client, "nobody", "correct horse").status_code == 401
    for _ in range(4):
        assert sign_in(client, REVIEWER[0], "wrong password").status_code == 401
    # five failures from this address: even the right password is refused for a while
    refused = sign_in(client, *REVIEWER)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in refused.text
    records = desk.audit()
    assert [r.action for r in records] == ["login_failed"] * 5
    assert records[0].actor == "(unknown)"  # an unknown name is not recorded as typed
    assert {r.actor for r in records[1:]} == {REVIEWER[0]}


def test_the_login_form_needs_its_own_csrf_token(desk: Desk) -> None:
    client = desk.client()
    client.get("/login")
    response = client.post("/login", data={"username": REVIEWER[0], "password": REVIEWER[1]})
    assert response.status_code == 403
    assert "review_session" not in client.cookies


def test_a_session_expires_after_its_lifetime(desk: Desk) -> None:
    now = [1_800_000_000.0]
    desk.station.sessions = SessionCodec(b"x" * 32, 600, clock=lambda: now[0])
    client = desk.signed_in(REVIEWER)
    assert client.get("/quarantine").status_code == 200
    now[0] += 599
    assert client.get("/quarantine").status_code == 200
    now[0] += 2
    response = client.get("/quarantine")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert client.get(f"/quarantine/{desk.photo}/files/panel.png").status_code == 401


def test_sign_out_revokes_the_session_even_if_the_cookie_is_kept(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    cookie = client.cookies.get("review_session")
    assert cookie
    response = client.post("/logout", data={"csrf": csrf_of(client)})
    assert response.status_code == 303
    replay = desk.client(cookies={"review_session": cookie})
    assert replay.get("/quarantine").status_code == 303
    assert [r.action for r in desk.audit()] == ["login", "logout"]


def test_removing_a_user_ends_their_session_at_once(desk: Desk, tmp_path: Path) -> None:
    client = desk.signed_in(REVIEWER)
    assert client.get("/quarantine").status_code == 200
    remove_user(tmp_path / "users", REVIEWER[0])
    assert client.get("/quarantine").status_code == 303


# --- roles ---------------------------------------------------------------------------------------


def test_a_reviewer_sees_pictures_and_every_view_of_an_original_is_audited(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    listing = client.get("/quarantine").text
    assert f'src="/quarantine/{desk.photo}/thumb.png"' in listing
    assert (
        "IoU 0.41" in listing and "Lesion changed" in listing and "Burned-in annotation" in listing
    )
    page = client.get(f"/quarantine/{desk.photo}").text
    for name in ("panel.png", "original.png", "deidentified.png"):
        assert f'src="/quarantine/{desk.photo}/files/{name}"' in page
    assert 'action="/quarantine/' in page and "Release" in page and "Purge" in page
    thumb = client.get(f"/quarantine/{desk.photo}/thumb.png")
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    assert client.get(f"/quarantine/{desk.photo}/files/deidentified.png").status_code == 200
    assert [r.action for r in desk.audit()] == ["login"]  # de-identified images: not originals
    panel = client.get(f"/quarantine/{desk.photo}/files/panel.png")
    assert panel.status_code == 200 and panel.headers["content-type"] == "image/png"
    assert client.get(f"/quarantine/{desk.photo}/files/original.png").status_code == 200
    ct_page = client.get(f"/quarantine/{desk.ct}").text
    assert f'src="/quarantine/{desk.ct}/instance.png"' in ct_page
    picture = client.get(f"/quarantine/{desk.ct}/instance.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    views = [r for r in desk.audit() if r.action == "view_original"]
    assert [(r.actor, r.entry_id, r.detail["file"]) for r in views] == [
        (REVIEWER[0], desk.photo, "panel.png"),
        (REVIEWER[0], desk.photo, "original.png"),
        (REVIEWER[0], desk.ct, "instance.dcm"),
    ]


def test_pages_never_show_identifying_values(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    for path in ("/quarantine", f"/quarantine/{desk.photo}", f"/quarantine/{desk.ct}", "/status"):
        text = client.get(path).text
        for value in ("TEST^IDENTIFIABLE", "IDENTIFIABLE", "PID-4711"):
            assert value not in text, path


def test_a_viewer_sees_no_image_and_cannot_act_even_on_direct_urls(desk: Desk) -> None:
    client = desk.signed_in(VIEWER)
    listing = client.get("/quarantine")
    assert listing.status_code == 200
    assert "<img" not in listing.text and "Lesion changed" in listing.text
    page = client.get(f"/quarantine/{desk.photo}")
    assert page.status_code == 200
    assert "<img" not in page.text
    assert "Images are shown to reviewers only" in page.text
    assert "/release" not in page.text and "Purge" not in page.text
    for name in ("panel.png", "original.png", "deidentified.png"):
        assert client.get(f"/quarantine/{desk.photo}/files/{name}").status_code == 403
    assert client.get(f"/quarantine/{desk.photo}/thumb.png").status_code == 403
    assert client.get(f"/quarantine/{desk.ct}/instance.png").status_code == 403
    token = csrf_of(client)  # a valid token of the viewer's own session
    for decision in ("release", "rerun", "purge"):
        response = client.post(
            f"/quarantine/{desk.photo}/{decision}", data={"csrf": token, "why": "I decide"}
        )
        assert response.status_code == 403
    assert client.get("/audit").status_code == 403
    assert client.get("/audit.csv").status_code == 403
    assert client.get("/status").status_code == 200
    assert desk.storage.journal.quarantine_entry(desk.photo).state == "held"  # type: ignore[union-attr]
    assert [r.action for r in desk.audit()] == ["login"]


# --- CSRF and decisions --------------------------------------------------------------------------


def test_an_action_without_a_valid_csrf_token_is_refused(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    url = f"/quarantine/{desk.photo}/release"
    assert client.post(url, data={"why": "looks fine to me"}).status_code == 403
    assert client.post(url, data={"why": "looks fine", "csrf": "1.abc"}).status_code == 403
    other = desk.signed_in(REVIEWER)  # the same user's other session has its own tokens
    response = client.post(url, data={"why": "looks fine", "csrf": csrf_of(other)})
    assert response.status_code == 403
    assert desk.storage.journal.quarantine_entry(desk.photo).state == "held"  # type: ignore[union-attr]
    refused = [r for r in desk.audit() if r.action == "release"]
    assert len(refused) == 3
    assert all(r.outcome.startswith("refused: CSRF") for r in refused)


def test_releasing_a_lesion_rejection_records_who_and_why_and_waives_the_gate(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    token = csrf_of(client, f"/quarantine/{desk.photo}")
    response = client.post(
        f"/quarantine/{desk.photo}/release",
        data={"csrf": token, "why": "lesion border intact in the panel"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/quarantine?done=release&entry={desk.photo}"
    assert f"{desk.photo} released." in client.get(response.headers["location"]).text
    journal = desk.storage.journal
    assert journal.quarantine_entry(desk.photo).state == "released"  # type: ignore[union-attr]
    (decision,) = journal.decisions(desk.photo)
    assert decision["action"] == "release"
    assert decision["detail"]["by"] == REVIEWER[0]
    assert decision["detail"]["note"] == "lesion border intact in the panel"
    assert decision["detail"]["waive_gate"] is True
    assert decision["detail"]["accept_pixels"] is False
    # back into the pipeline as a new arrival that carries the decision
    waiting = journal.received_in_study("p" * 64)
    assert [w.override for w in waiting] == [{"released_from": desk.photo, "waive_gate": True}]
    assert not (desk.cfg.storage.quarantine_dir / desk.photo).exists()
    (record,) = [r for r in desk.audit() if r.action == "release"]
    assert (record.actor, record.entry_id, record.why) == (
        REVIEWER[0],
        desk.photo,
        "lesion border intact in the panel",
    )
    assert record.outcome == "sent back to the pipeline"
    # the decided entry's page shows the decision, and a second release is refused
    page = client.get(f"/quarantine/{desk.photo}").text
    assert "released" in page and "lesion border intact in the panel" in page
    again = client.post(
        f"/quarantine/{desk.photo}/release", data={"csrf": token, "why": "once more"}
    )
    assert again.status_code == 409 and "already released" in again.text


def test_releasing_a_burned_in_annotation_accepts_its_pixels(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    token = csrf_of(client)
    response = client.post(
        f"/quarantine/{desk.ct}/release", data={"csrf": token, "why": "no text in the image"}
    )
    assert response.status_code == 303
    (waiting,) = desk.storage.journal.received_in_study("c" * 64)
    assert waiting.override == {"released_from": desk.ct, "accept_pixels": True}


def test_a_decision_needs_a_reason(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    token = csrf_of(client)
    for why in ("", "   ", "ok"):
        response = client.post(f"/quarantine/{desk.photo}/purge", data={"csrf": token, "why": why})
        assert response.status_code == 400
        assert "give a reason" in response.text
    assert desk.storage.journal.quarantine_entry(desk.photo).state == "held"  # type: ignore[union-attr]
    assert (desk.cfg.storage.quarantine_dir / desk.photo / "panel.png").exists()


def test_rerun_without_a_route_needs_one_and_only_configured_routes(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    token = csrf_of(client)
    url = f"/quarantine/{desk.unrouted}"
    page = client.get(url).text
    assert f'formaction="{url}/release"' not in page  # nothing to release as it is
    assert "RT Plan Storage" in page and "not an image object" in page
    assert "instance.png" not in page
    assert client.get(url + "/instance.png").status_code == 422
    response = client.post(url + "/release", data={"csrf": token, "why": "send it as is"})
    assert response.status_code == 400 and "No route matched" in response.text
    response = client.post(url + "/rerun", data={"csrf": token, "why": "new camera"})
    assert response.status_code == 400 and "pick a route" in response.text
    response = client.post(
        url + "/rerun", data={"csrf": token, "why": "new camera", "route": "nope"}
    )
    assert response.status_code == 400 and "no route named" in response.text
    response = client.post(
        url + "/rerun", data={"csrf": token, "why": "dermatology camera", "route": "photos"}
    )
    assert response.status_code == 303
    (waiting,) = desk.storage.journal.received_in_study("u" * 64)
    assert waiting.override == {"released_from": desk.unrouted, "route": "photos"}
    # no picture was shown, so no view of an original is recorded
    outcomes = [(r.action, r.outcome.split(":")[0]) for r in desk.audit() if r.entry_id]
    assert outcomes == [
        ("release", "refused"),
        ("rerun", "refused"),
        ("rerun", "refused"),
        ("rerun", "sent back to the pipeline on route photos"),
    ]


def test_purge_deletes_the_files_and_keeps_the_record(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    token = csrf_of(client)
    folder = desk.cfg.storage.quarantine_dir / desk.photo
    assert folder.exists()
    response = client.post(
        f"/quarantine/{desk.photo}/purge", data={"csrf": token, "why": "test image, not clinical"}
    )
    assert response.status_code == 303
    assert not folder.exists()
    assert desk.storage.journal.quarantine_entry(desk.photo).state == "purged"  # type: ignore[union-attr]
    assert client.get(f"/quarantine/{desk.photo}/files/panel.png").status_code == 404
    listing = client.get("/quarantine?state=all").text
    assert desk.photo in listing
    assert desk.photo not in client.get("/quarantine").text


def test_unknown_entries_and_file_names_are_not_found(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    assert client.get("/quarantine/q-0000000000000000").status_code == 404
    assert client.get("/quarantine/q-zz").status_code == 404
    assert client.get(f"/quarantine/{desk.photo}/files/instance.dcm").status_code == 404
    assert client.get(f"/quarantine/{desk.photo}/files/entry.json").status_code == 404
    assert client.get(f"/quarantine/{desk.photo}/files/..%2Fentry.json").status_code == 404
    token = csrf_of(client)
    assert (
        client.post(
            f"/quarantine/{desk.photo}/approve", data={"csrf": token, "why": "x" * 8}
        ).status_code
        == 404
    )


# --- the list, status, audit, headers ------------------------------------------------------------


def test_the_list_filters_by_reason_route_and_date(desk: Desk) -> None:
    client = desk.signed_in(VIEWER)

    def ids(query: str) -> set[str]:
        text = client.get("/quarantine?" + query).text
        return set(re.findall(r'href="/quarantine/(q-[0-9a-f]{16})"', text))

    assert ids("") == {desk.photo, desk.ct, desk.unrouted}
    assert ids("reason=burned_in_annotation") == {desk.ct}
    assert ids("route=photos") == {desk.photo}
    assert ids("since=2000-01-01&until=2000-01-02") == set()
    assert ids("since=2000-01-01") == {desk.photo, desk.ct, desk.unrouted}


def test_status_page_draws_three_charts_for_every_role(desk: Desk) -> None:
    client = desk.signed_in(VIEWER)
    page = client.get("/status?hours=6")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart"') == 3
    assert "Burned-in annotation" in page.text and "waiting for review" in page.text


def test_audit_export_as_csv_is_itself_audited(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    client.get(f"/quarantine/{desk.photo}/files/panel.png")
    export = client.get("/audit.csv")
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["action"] for r in rows] == ["login", "view_original"]
    assert rows[1]["entry"] == desk.photo and rows[1]["actor"] == REVIEWER[0]
    assert desk.audit()[-1].action == "audit_export"
    page = client.get("/audit")
    assert page.status_code == 200 and "view original" in page.text


def test_every_response_forbids_caching_framing_and_foreign_content(desk: Desk) -> None:
    client = desk.signed_in(REVIEWER)
    for path in ("/quarantine", f"/quarantine/{desk.photo}/files/original.png", "/login"):
        headers = client.get(path).headers
        assert headers["cache-control"] == "no-store"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert "server" not in client.get("/status").headers


# --- trusted proxy -------------------------------------------------------------------------------


def test_a_trusted_proxys_headers_count_from_its_address_only(tmp_path: Path) -> None:
    desk = Desk(
        tmp_path,
        auth="trusted_header",
        trusted_header={"proxies": ["10.1.2.3"], "reviewer_groups": ["privacy"]},
    )
    headers = {"X-Forwarded-User": "rita", "X-Forwarded-Groups": "privacy"}
    try:
        proxied = desk.client(client=("10.1.2.3", 40000), headers=headers)
        page = proxied.get(f"/quarantine/{desk.photo}")
        assert page.status_code == 200 and "rita" in page.text
        assert proxied.get(f"/quarantine/{desk.photo}/files/panel.png").status_code == 200
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        assert proxied.post(f"/quarantine/{desk.ct}/purge", data={"why": "dup!"}).status_code == 403
        done = proxied.post(f"/quarantine/{desk.ct}/purge", data={"csrf": token, "why": "dup!"})
        assert done.status_code == 303
        # the same headers straight from a workstation are ignored
        direct = desk.client(client=("10.1.2.4", 40000), headers=headers)
        assert direct.get("/quarantine").status_code == 403
        assert direct.get(f"/quarantine/{desk.photo}/files/panel.png").status_code == 403
        # no password sign-in in this mode
        assert proxied.post("/login", data={"username": "x", "password": "y"}).status_code == 404
        actors = {(r.actor, r.action) for r in desk.audit()}
        assert actors == {("rita", "view_original"), ("rita", "purge")}
    finally:
        desk.storage.close()


def test_every_quarantine_reason_has_words_for_the_reviewer() -> None:
    """A new reason without a title and an explanation would show the reviewer a bare code."""
    from gateway.events import QuarantineReason
    from gateway.review.texts import REASONS

    missing = [reason.value for reason in QuarantineReason if reason.value not in REASONS]
    assert missing == []
    assert all(title and text for title, text in REASONS.values())

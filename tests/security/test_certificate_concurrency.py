"""Concurrent requests on one device's certificates (a technician's double click, a retry racing the first
try, two people at once): they run one after another per device, so rotation and retire hold whatever the
order."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
from test_broker_tls import _csr, _new


def _at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def _valid(tech: httpx.Client, device_id: str) -> list[str]:
    r = tech.get(f"/devices/{device_id}/certificates")
    assert r.status_code == 200, r.text
    return [c["serial"] for c in r.json() if c["status"] == "valid"]


def test_concurrent_signs_leave_one_valid_certificate(tech: httpx.Client, tmp_path: Path) -> None:
    device_id, _ = _new(tech, "race")
    csrs = []
    for n in range(6):
        (tmp_path / str(n)).mkdir()
        csrs.append(_csr(device_id, tmp_path / str(n))[0])
    replies = _at_once(*[partial(tech.post, f"/devices/{device_id}/certificate", json={"csr": csr, "grace_s": 3600})
                         for csr in csrs])
    assert [r.status_code for r in replies] == [201] * len(csrs), [r.text for r in replies]
    last = max(replies, key=lambda r: len(r.json()["superseded"]))
    assert _valid(tech, device_id) == [last.json()["serial"]]
    assert len(last.json()["superseded"]) == len(csrs) - 1  # the last one saw all the others


def test_sign_racing_retire_leaves_no_valid_certificate(tech: httpx.Client, tmp_path: Path) -> None:
    for n in range(4):
        device_id, _ = _new(tech, "race")
        (tmp_path / str(n)).mkdir()
        csr = _csr(device_id, tmp_path / str(n))[0]
        sign, retire = _at_once(partial(tech.post, f"/devices/{device_id}/certificate", json={"csr": csr}),
                                partial(tech.delete, f"/devices/{device_id}"))
        assert retire.status_code == 200, retire.text
        assert sign.status_code in (201, 409), sign.text  # before the retire, or refused after it
        assert _valid(tech, device_id) == [], "a retired device kept a valid certificate"

"""The Optuna dashboard in a real browser: a real `hpsearch serve`, a study run to the end by a
scripted HTTP worker, then the study's dashboard_url opened in headless Chromium. The page is a
JavaScript app (the HTML the server sends names no study), so finding the study and its trials
in the DOM after Chromium ran it means the dashboard really rendered them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.servers import ThreadServer, digits_spec, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.browser]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 1000)
EPOCHS = 3
N_TRIALS = 4


def val_loss(number: int, epoch: int) -> float:
    """Learning curves that fall with each epoch; later trials are clearly worse, so the
    median pruner stops some of them once two trials are complete."""
    return round(1.0 / (epoch + 1) + 0.1 * number, 6)


@dataclass(frozen=True)
class FinishedStudy:
    name: str
    study_id: int
    dashboard_url: str
    base_url: str
    states: dict[int, str]  # trial number -> complete | pruned, as the server answered
    reported: dict[int, dict[int, float]]  # trial number -> epoch -> val_loss sent


def run_scripted_worker(api: httpx.Client, study: str) -> tuple[dict[int, str], dict]:
    """Claim, report each epoch, complete (or stop when told to prune), until nothing is left."""
    states: dict[int, str] = {}
    reported: dict[int, dict[int, float]] = {}
    while True:
        claim = api.post("/api/v1/trials/claim", json={"worker_id": "scripted-1", "study": study})
        if claim.status_code == 204:
            return states, reported
        assert claim.status_code == 200, claim.text
        trial = claim.json()
        number, trial_id = trial["number"], trial["trial_id"]
        reported[number] = {}
        states[number] = "complete"
        for epoch in range(EPOCHS):
            loss = val_loss(number, epoch)
            answer = api.post(
                f"/api/v1/trials/{trial_id}/report",
                json={"epoch": epoch, "val_loss": loss, "val_accuracy": 0.5},
            )
            assert answer.status_code == 200, answer.text
            reported[number][epoch] = loss
            if answer.json()["prune"]:
                states[number] = "pruned"
                break
        if states[number] == "complete":
            done = api.post(
                f"/api/v1/trials/{trial_id}/complete",
                json={"val_loss": reported[number][EPOCHS - 1], "val_accuracy": 0.5},
            )
            assert done.status_code == 200, done.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """One server for the module (what `server_factory` starts, kept for both tests)."""
    folder = tmp_path_factory.mktemp("dashboard")
    server = ThreadServer(f"sqlite:///{folder / 'hpsearch.db'}", folder / "server", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def finished_study(server: ThreadServer) -> FinishedStudy:
    name = "browser-check-resnet18"
    spec = digits_spec(name, n_trials=N_TRIALS, training={"epochs": EPOCHS, "seed": 0})
    with httpx.Client(base_url=server.url, timeout=60) as api:
        created = api.post("/api/v1/studies", json=spec)
        assert created.status_code == 201, created.text
        dashboard_url = created.json()["dashboard_url"]
        states, reported = run_scripted_worker(api, name)
        summary = api.get(f"/api/v1/studies/{name}").json()
    assert sorted(states) == list(range(N_TRIALS)), states
    assert summary["state"] == "done", summary
    assert {"complete", "pruned"} <= set(states.values()), f"want both outcomes: {states}"
    match = re.fullmatch(re.escape(server.url) + r"/dashboard/studies/(\d+)", dashboard_url)
    assert match, f"dashboard_url {dashboard_url} is not this server's study page"
    return FinishedStudy(name, int(match.group(1)), dashboard_url, server.url, states, reported)


def test_dashboard_api_serves_the_learning_curves(finished_study: FinishedStudy) -> None:
    """The JSON API the dashboard page reads: every trial with its state and each epoch's loss."""
    study = finished_study
    detail = httpx.get(f"{study.base_url}/api/studies/{study.study_id}", timeout=30)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["name"] == study.name
    trials = {t["number"]: t for t in body["trials"]}
    assert sorted(trials) == sorted(study.states)
    for number, trial in trials.items():
        assert trial["state"].lower() == study.states[number], (number, trial["state"])
        curve = {v["step"]: v["value"] for v in trial["intermediate_values"]}
        assert curve == pytest.approx(study.reported[number]), f"trial {number}: {curve}"
    assert body["has_intermediate_values"] is True


def test_dashboard_renders_the_study_in_chromium(
    finished_study: FinishedStudy, tmp_path: Path
) -> None:
    study = finished_study
    browser = chromium_or_skip()
    shell = httpx.get(study.dashboard_url, timeout=30)
    assert shell.status_code == 200 and study.name not in shell.text, (
        "the dashboard's HTML already names the study: the check below would prove nothing"
    )

    screenshot = tmp_path / "dashboard.png"
    page = visible_text(render(browser, study.dashboard_url, tmp_path / "profile", screenshot))
    assert study.name in page, f"the study's name is not on its dashboard page:\n{page[:2000]}"
    # The intermediate-values plot draws one learning curve per trial, named in its legend.
    missing = [n for n in study.states if f"trial #{n}" not in page]
    assert not missing, f"no learning curve for trials {missing} on the page:\n{page[:2000]}"

    width, height = png_size(screenshot)
    assert (width, height) == WINDOW, (width, height)
    # A blank 1400x1000 page is about 6 KB; the rendered dashboard, with its plots, is ~60 KB.
    assert screenshot.stat().st_size > 20_000, f"{screenshot} looks blank"

    trials_url = f"{study.dashboard_url}/trials"
    trials_page = visible_text(render(browser, trials_url, tmp_path / "profile"))
    for number in study.states:
        assert f"Trial {number}" in trials_page, f"trial {number} is not listed:\n{trials_page}"
    for state in set(study.states.values()):
        assert state.capitalize() in trials_page, f"no {state} trial listed:\n{trials_page}"


# --- Chromium -----------------------------------------------------------------------------


def chromium_or_skip() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
        "`apt-get install chromium` (.ci/run does) to run the browser check"
    )


def render(browser: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of `url` after its scripts ran, from headless Chromium; optionally a screenshot.
    --virtual-time-budget lets the page's timers and fetches run to completion first."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=15000",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    process = subprocess.Popen(
        [*command, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        end_group(process)
        out, err = process.communicate()
        pytest.fail(f"chromium did not finish {url} in 90 s: {err[-3000:]}")
    finally:
        end_group(process)  # helper processes that outlived the browser
    assert process.returncode == 0 and out, f"chromium failed on {url}: {err[-3000:]}"
    if screenshot is not None:
        assert screenshot.is_file(), f"chromium wrote no screenshot: {err[-3000:]}"
    return out


def end_group(process: subprocess.Popen) -> None:
    """Chromium's helper processes share its process group (its own session): end them all."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height

"""The replay app served for real (`app.main(..., block=False)`): its API through gradio_client, its file route over
raw HTTP, and its page in headless Chromium, against synthetic rollouts whose every value is known
(tests/rollouts.py), so that what comes back can be compared with what was recorded.

Gradio keeps the choices of dropdowns and checkbox groups per session and refuses values outside them, so an API
client has to walk the page's own chain (source -> suite -> task -> episode) before it can show an episode; the
`_session` helper does that.
"""

import http.client
import json
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import app
from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.libero.recording import ACTION_NAMES
from rollouts import TASK, frame_value, write_evaluation

pytestmark = pytest.mark.slow

SUITE = "libero_object"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WINDOW = (1400, 2400)
TOLERANCE = 4  # grey levels lost to H.264 / WebP compression of a flat frame (distinct steps are 10 apart)


# -- helpers -----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path):
    return app.main(["--rollouts", str(root), "--port", str(_free_port())], block=False)


def _rollout_id(root: Path, folder: Path) -> str:
    """The id the catalog gives the (single) episode recorded in `folder`."""
    return f"{root}/{folder.relative_to(root).as_posix()}#0"


def _session(url: str, root: Path, task_id: int = 0, episode: str | None = None) -> Client:
    """A client whose session went through the page's chain, so that the ids of the task's episodes, the comparable
    rollouts of `episode` and its state dimensions are valid choices."""
    client = Client(url, verbose=False)
    client.predict(str(root), api_name="/choose_source")
    client.predict(str(root), SUITE, api_name="/choose_suite")
    client.predict(str(root), SUITE, task_id, api_name="/choose_task")
    if episode is not None:
        client.predict(episode, [], api_name="/show_episode")  # no dimension is a choice before this call
    return client


def _traces(plot: dict) -> dict:
    """name -> trace of the plotly figure a gr.Plot output comes back as ({"type": "plotly", "plot": json})."""
    assert plot["type"] == "plotly"
    return {trace["name"]: trace for trace in json.loads(plot["plot"])["data"]}


def _shapes(plot: dict) -> list:
    return json.loads(plot["plot"])["layout"].get("shapes", [])


def _y(trace) -> np.ndarray:
    """The trace's values as float32, which is what was recorded (exact: the JSON holds float32 -> float64)."""
    return np.array([np.nan if v is None else v for v in trace["y"]], np.float32)


def _video_brightness(path) -> list[float]:
    """The mean grey level of every frame of an mp4."""
    with av.open(str(path)) as container:
        return [float(frame.to_ndarray(format="rgb24").mean()) for frame in container.decode(video=0)]


def _image_brightness(path) -> float:
    return float(np.asarray(Image.open(path).convert("RGB")).mean())


def _get(url: str, raw_path: str) -> tuple[int, str]:
    """GET the path exactly as written (http.client does not normalise `..` or percent-escapes, unlike httpx)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


# -- the served app ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("served_rollouts")
    folders = write_evaluation(root)
    ids = {name: _rollout_id(root, folder) for name, folder in folders.items()}
    return root, folders, ids


@pytest.fixture(scope="module")
def server(evaluation):
    blocks = _launch(evaluation[0])
    try:
        yield blocks, blocks.local_url.rstrip("/")
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def url(server):
    return server[1]


def test_listens_on_localhost_only_by_default(server, monkeypatch):
    blocks, url = server
    assert blocks.server_name == "127.0.0.1" and urlsplit(url).hostname == "127.0.0.1"
    # bound to 127.0.0.1 itself, not to every interface: another loopback address (routed to lo on Linux) is refused
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", urlsplit(url).port), timeout=2):
        pass
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what Spaces set
    assert app.parse_args([]).host == "0.0.0.0"


def test_overview_counts_episodes_and_successes(url, evaluation):
    root, _, ids = evaluation
    client = Client(url, verbose=False)
    text, plot, table, suites = client.predict(str(root), api_name="/choose_source")
    assert text.startswith("**3 episodes**") and "Could not be read" not in text
    assert suites["value"] == SUITE
    rows = {(row[0], row[2]): row[3:6] for row in table["data"]}  # (suite / task, condition) -> counts and rate
    assert table["headers"][3:6] == ["episodes", "successes", "success rate"]
    assert rows == {  # the anticipatory episode of task 0 is the only success
        (f"{SUITE}/0", "anticipatory · nominal · tiny"): [1, 1, 1.0],
        (f"{SUITE}/0", "open_loop · nominal · tiny"): [1, 0, 0.0],
        (f"{SUITE}/3", "anticipatory · nominal · tiny"): [1, 0, 0.0],
        (f"{SUITE} (all)", "anticipatory · nominal · tiny"): [2, 1, 0.5],
        (f"{SUITE} (all)", "open_loop · nominal · tiny"): [1, 0, 0.0],
    }
    bars = _traces(plot)
    assert bars["anticipatory · nominal · tiny"]["y"] == [100.0, 0.0, 50.0]
    assert bars["open_loop · nominal · tiny"]["y"] == [0.0, 0.0]
    # the chain narrows down to the episodes of the task, by the ids the catalog made
    tasks = client.predict(str(root), SUITE, api_name="/choose_suite")
    assert tasks["choices"] == [[f"0: {TASK}", 0], [f"3: {TASK}", 3]]
    episodes = client.predict(str(root), SUITE, 0, api_name="/choose_task")
    assert [choice[1] for choice in episodes["choices"]] == [ids["anticipatory"], ids["open_loop"]]


def test_episode_shows_recorded_videos_and_values(url, evaluation):
    root, folders, ids = evaluation
    client = _session(url, root, episode=ids["anticipatory"])
    header, video_1, video_2, slider, dims, frame_1, frame_2, plot, other = client.predict(
        ids["anticipatory"], ["eef_x", "eef_y"], api_name="/show_episode")  # state dimensions 0 and 1
    assert TASK in header and "success in 12 steps" in header
    assert (slider["minimum"], slider["maximum"], slider["value"]) == (0, 11, 0)
    assert dims["value"] == ["eef_x", "eef_y"] and other["value"] == ids["open_loop"]
    for camera, (video, frame) in enumerate([(video_1, frame_1), (video_2, frame_2)]):
        assert Path(video).is_file()
        np.testing.assert_allclose(_video_brightness(video), [frame_value(t, camera) for t in range(12)],
                                   atol=TOLERANCE)
        assert abs(_image_brightness(frame) - frame_value(0, camera)) <= TOLERANCE

    dataset = LeRobotDataset(folders["anticipatory"])
    traces, steps = _traces(plot), list(range(12))
    actions = dataset.column("action")
    for i, name in enumerate(ACTION_NAMES):
        assert traces[f"sent {name}"]["x"] == steps
        np.testing.assert_array_equal(_y(traces[f"sent {name}"]), actions[:, i])
    states, inputs = dataset.column("observation.state"), dataset.column("policy.state_input")
    for i, name in enumerate(["eef_x", "eef_y"]):
        np.testing.assert_array_equal(_y(traces[f"observed {name}"]), states[:, i])
        np.testing.assert_array_equal(_y(traces[f"state input {name}"]), inputs[:, i])
        np.testing.assert_array_equal(_y(traces[f"residual {name}"]), states[:, i] - inputs[:, i])
        predicted = traces[f"predicted {name}"]
        assert predicted["x"] == [t + 1 for t in steps]  # the prediction of the state after action t
        np.testing.assert_array_equal(_y(predicted), dataset.column("policy.predicted_state")[:, i])
    assert not any("eef_z" in name for name in traces)  # only the chosen dimensions
    np.testing.assert_array_equal(_y(traces["latency"]), dataset.column("policy.latency_ms").reshape(-1))
    assert {(s["x0"], s["x1"]) for s in _shapes(plot)} == {(0, 0)}


def test_step_shows_that_steps_frames_and_moves_the_marker(url, evaluation):
    root, folders, ids = evaluation
    client = _session(url, root, episode=ids["anticipatory"])
    for step in (5, 11):
        frame_1, frame_2, plot = client.predict(ids["anticipatory"], ["eef_x"], step, api_name="/show_step")
        for camera, frame in enumerate([frame_1, frame_2]):
            assert abs(_image_brightness(frame) - frame_value(step, camera)) <= TOLERANCE
        shapes = _shapes(plot)
        assert len(shapes) == 4 and {(s["x0"], s["x1"]) for s in shapes} == {(step, step)}  # one per subplot
        states = LeRobotDataset(folders["anticipatory"]).column("observation.state")
        np.testing.assert_array_equal(_y(_traces(plot)["observed eef_x"]), states[:, 0])


def test_comparison_shows_both_rollouts(url, evaluation):
    root, folders, ids = evaluation
    client = _session(url, root, episode=ids["anticipatory"])
    header, video_a, video_b, slider, frame_a, frame_b, plot = client.predict(
        ids["anticipatory"], ids["open_loop"], "camera 2", ["eef_x"], api_name="/show_comparison")
    assert "**A**" in header and "anticipatory · nominal · success in 12 steps" in header
    assert "**B**" in header and "open_loop · nominal · failure in 15 steps" in header
    assert slider["maximum"] == 14  # the longer of the two
    for video, steps in ((video_a, 12), (video_b, 15)):  # camera 2 of each
        np.testing.assert_allclose(_video_brightness(video), [frame_value(t, 1) for t in range(steps)],
                                   atol=TOLERANCE)
    for frame in (frame_a, frame_b):
        assert abs(_image_brightness(frame) - frame_value(0, 1)) <= TOLERANCE
    traces = _traces(plot)
    for tag, folder in (("A", folders["anticipatory"]), ("B", folders["open_loop"])):
        dataset = LeRobotDataset(folder)
        np.testing.assert_array_equal(_y(traces[f"{tag} observed eef_x"]), dataset.column("observation.state")[:, 0])
        np.testing.assert_array_equal(_y(traces[f"{tag} sent gripper"]), dataset.column("action")[:, 6])
        np.testing.assert_array_equal(_y(traces[f"{tag} latency"]), dataset.column("policy.latency_ms").reshape(-1))
    # past the end of A, A stays on its last frame while B goes on
    frame_a, frame_b, plot = client.predict(ids["anticipatory"], ids["open_loop"], "camera 2", ["eef_x"], 13,
                                            api_name="/compare_step")
    assert abs(_image_brightness(frame_a) - frame_value(11, 1)) <= TOLERANCE
    assert abs(_image_brightness(frame_b) - frame_value(13, 1)) <= TOLERANCE
    assert {(s["x0"], s["x1"]) for s in _shapes(plot)} == {(13, 13)}


# -- errors and files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_id", [lambda ids: "../../etc/passwd",
                                     lambda ids: ids["anticipatory"].replace("/anticipatory/", "/anticipatory/../")],
                         ids=["outside", "dot-dot-inside"])
def test_unknown_rollouts_are_refused_with_a_message(url, evaluation, make_id):
    root, _, ids = evaluation
    client = _session(url, root, episode=ids["anticipatory"])
    bad = make_id(ids)
    with pytest.raises(AppError) as error:
        client.predict(bad, [], api_name="/show_episode")
    assert bad in str(error.value) and "Traceback" not in str(error.value)
    assert "root:" not in str(error.value)  # nothing of /etc/passwd leaks into the message


def test_out_of_range_steps_are_refused_with_a_message(url, evaluation):
    root, _, ids = evaluation
    client = _session(url, root, episode=ids["anticipatory"])
    for step in (12, 99, -1):  # the episode has steps 0..11
        with pytest.raises(AppError) as error:
            client.predict(ids["anticipatory"], ["eef_x"], step, api_name="/show_step")
        assert str(step) in str(error.value) and "Traceback" not in str(error.value)


def test_file_route_serves_nothing_outside_the_rollout_folders(server, evaluation):
    _, url = server
    root, folders, _ = evaluation
    readme = Path(app.__file__).resolve().parent / "README.md"
    secrets = {"/etc/passwd": "root:", str(readme): readme.read_text().splitlines()[0]}
    link = root / "readme_link.md"  # a link placed inside a served folder must not lead out of it
    link.symlink_to(readme)
    up = "/".join([".."] * 12)
    requests = [f"{prefix}{path}" for prefix in ("/gradio_api/file=", "/file=") for path in (
        "/etc/passwd", str(readme), f"{root}/{up}/etc/passwd", f"{root}/{up.replace('..', '%2e%2e')}/etc/passwd",
        f"{root}/{up.replace('/', '%2F')}%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", f"{up}/etc/passwd", str(link))]
    for request in requests:
        status, body = _get(url, request)
        assert status in (403, 404), (request, status)
        assert not any(secret in body for secret in secrets.values()), request
    # the route itself works: a file of a rollout folder is served (so the refusals above mean something)
    status, body = _get(url, f"/gradio_api/file={folders['anticipatory']}/meta/info.json")
    assert status == 200 and json.loads(body)["codebase_version"] == "v3.0"


def test_malformed_folders_are_listed_and_good_episodes_still_load(tmp_path, evaluation):
    source, folders, _ = evaluation
    root = tmp_path / "rollouts"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.md"))
    good, broken = root / folders["anticipatory"].relative_to(source), root / "broken"
    no_data, bad_info = broken / "no_data", broken / "bad_info"
    for copy in (no_data, bad_info):
        shutil.copytree(good, copy)
    (no_data / "data" / "chunk-000" / "file-000.parquet").unlink()
    info = bad_info / "meta" / "info.json"
    info.write_text(info.read_text()[:100])  # an evaluation killed while writing
    blocks = _launch(root)  # starts despite them
    try:
        url = blocks.local_url.rstrip("/")
        text = Client(url, verbose=False).predict(str(root), api_name="/choose_source")[0]
        assert "**Could not be read:**" in text
        line = next(line for line in text.splitlines() if str(bad_info) in line)
        assert len(line.split(f"{bad_info}:", 1)[1].strip()) > 5  # with its reason
        line = next(line for line in text.splitlines() if str(no_data) in line)
        assert "missing" in line and "data/chunk-000/file-000.parquet" in line  # the partial one, and what it lacks
        client = _session(url, root)
        episodes = [choice[1] for choice in client.predict(str(root), SUITE, 0, api_name="/choose_task")["choices"]]
        assert _rollout_id(root, good) in episodes
        assert not {_rollout_id(root, bad_info), _rollout_id(root, no_data)} & set(episodes)
        header, video = client.predict(_rollout_id(root, good), [], api_name="/show_episode")[:2]
        assert TASK in header and len(_video_brightness(video)) == 12
    finally:
        blocks.close()


# -- the page in a browser ---------------------------------------------------------------------------------------


@pytest.fixture
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"{missing} not installed (scripts/setup_chromium.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_renders_overview_and_episode_in_chromium(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text_of(selector: str) -> str:  # textContent: also what is scrolled out of view or drawn in SVG
        return " ".join(e.get_attribute("textContent") or "" for e in browser.find_elements(By.CSS_SELECTOR, selector))

    wait = WebDriverWait(browser, 30)
    browser.get(url)
    wait.until(lambda _: "3 episodes" in text_of("body"))
    assert browser.title == "FAS-VLA rollouts"
    tabs = {tab.text.strip(): tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")}
    assert {"Overview", "Episode", "Compare"} <= set(tabs)
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))
    wait.until(lambda _: "anticipatory · nominal · tiny" in text_of(".js-plotly-plot .legendtext"))
    # the success table (a virtual grid of divs in Gradio 6): the suite row of the anticipatory episodes, 1 of 2
    wait.until(lambda _: f"{SUITE} (all)" in text_of("[role=grid] [role=gridcell]"))
    cells = "[role=gridcell]"
    rows = [[cell.get_attribute("textContent").strip() for cell in row.find_elements(By.CSS_SELECTOR, cells)]
            for row in browser.find_elements(By.CSS_SELECTOR, "[role=grid] [role=row]")]
    assert [f"{SUITE} (all)", "", "anticipatory · nominal · tiny", "2", "1", "0.5", "10.5"] in rows

    tabs["Episode"].click()
    wait.until(lambda _: len([v for v in browser.find_elements(By.TAG_NAME, "video") if v.get_attribute("src")]) == 2)
    wait.until(lambda _: "observed eef_x" in text_of(".js-plotly-plot .legendtext"))
    assert "sent dx" in text_of(".js-plotly-plot .legendtext")
    wait.until(lambda _: TASK in text_of("h3"))
    time.sleep(0.5)  # let plotly finish drawing before the screenshot

    screenshot = tmp_path / "episode.png"
    assert browser.save_screenshot(str(screenshot))
    viewport = browser.execute_script("return [window.innerWidth, window.innerHeight, window.devicePixelRatio]")
    with Image.open(screenshot) as image:  # the viewport: the window less the (headless) browser's own frame
        assert image.format == "PNG" and image.size == (viewport[0], viewport[1]) and viewport[2] == 1
        assert image.width == WINDOW[0] and WINDOW[1] - 300 < image.height <= WINDOW[1]
        assert np.asarray(image.convert("L"), np.float32).std() > 10  # not a blank page

"""The run report (``spiral.evaluation.run_report``): its pieces against independent references,
its pages for short real runs of every runtime, and those pages in a real headless Chromium.

* Event files: written by tensorboardX's own writer (through ``Monitor``), read back exactly;
  a file cut mid-record (a live run) reads up to the cut; a damaged header is an error.
* Charts: every drawn point sits where the chart's own printed tick labels say its value is.
* Pages: tiny runs of the local (conditional, L2 reward), Ray and fused runtimes, and a
  population of two of them; each page holds the sections, the config, every checkpoint's
  samples, the evaluation's GIFs and programs byte for byte, and the metrics as logged.
* Browser: Chromium loads each page from disk with no console error, every image decodes
  (natural width > 0), the slider switches checkpoints, and a screenshot is written.
"""

import base64
import html
import io
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, dataset_dir, skip_unless
from headless_chromium import Browser, find_chromium
from spiral.actors import run_loop
from spiral.actors.monitoring import Monitor
from spiral.evaluation import charts, events, log_checkpoint_metrics, read_eval_log, run_report
from spiral.launch import flags as launch_flags
from test_runtime_e2e import tiny_values

SVG = "{http://www.w3.org/2000/svg}"
UPDATES = 3  # per run: a checkpoint (and its evaluation) at each update
LATEST = f"ckpt_{UPDATES:08d}"


# ------------------------------------------------------------------------------------- event files

def test_event_log_reads_what_tensorboardx_wrote(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 12, 10, 1), dtype=np.uint8)
    first = Monitor(str(tmp_path), print_every_s=1e9)
    for step in range(5):
        first.scalars(step, {"loss": 0.5 * step, "nan": math.nan})
    first.images(3, "samples", image)
    first.close()
    # A resumed run writes a second file from its checkpoint's step on: the later value wins.
    (tmp_path / os.listdir(tmp_path)[0]).rename(tmp_path / "events.out.tfevents.1000000000.host")
    second = Monitor(str(tmp_path), print_every_s=1e9)
    second.scalars(4, {"loss": -1.0})
    second.scalars(5, {"loss": -2.0})
    second.close()
    log = events.read_event_log(str(tmp_path))
    assert log.scalar("loss") == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5), (4, -1.0), (5, -2.0)]
    assert "nan" not in log.scalars  # Monitor drops non-finite values
    (step, png), = log.images["samples"]
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    from spiral.actors.monitoring import image_grid
    grid = image_grid(image)  # tensorboardX stores one channel as three equal ones
    assert step == 3 and np.array_equal(decoded, np.repeat(grid, 3, axis=-1))


def test_event_log_stops_at_a_cut_record_and_rejects_a_damaged_one(tmp_path):
    monitor = Monitor(str(tmp_path), print_every_s=1e9)
    for step in range(10):
        monitor.scalars(step, {"x": float(step)})
    monitor.close()
    path = tmp_path / os.listdir(tmp_path)[0]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last record is still being written
    steps = [s for s, _ in events.read_event_log(str(tmp_path)).scalar("x")]
    assert steps == list(range(9))
    first_record_end = 12 + int.from_bytes(data[:8], "little") + 4
    damaged = bytearray(data)
    damaged[first_record_end + 3] ^= 0x01  # the second record's length
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="damaged TFRecord header"):
        events.read_event_log(str(tmp_path))


# ------------------------------------------------------------------------------------- charts

@pytest.mark.parametrize("low, high", [(0, 1), (-0.29, -0.19), (61.4, 1095.1), (1, 6), (0.001234, 0.00129),
                                       (-3e6, 2e6), (7, 7.0000001), (-1e-9, 1e-9)])
def test_nice_ticks_cover_the_range_with_round_steps(low, high):
    ticks = charts.nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 11
    steps = np.diff(ticks)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5)), mantissa
    assert ticks[1] > low and ticks[-2] < high  # no whole empty step at either end


def test_chart_draws_each_point_where_its_axis_labels_say():
    xs = [1, 2, 3, 5, 8, 13]
    series = [charts.Series("a", xs, [0.3, -0.2, math.nan, 0.9, 1.4, 1.1]),
              charts.Series("b", [4], [0.05])]
    svg = ET.fromstring(charts.line_chart(series, {"blank": 2.0, "random": -0.5}, title="t", x_label="x"))

    def axis(kind, coordinate):
        ticks = svg.findall(f"{SVG}g[@class='{kind}']")
        values = [float(t.get("data-value")) for t in ticks]
        assert [float(t.find(f"{SVG}text").text) for t in ticks] == pytest.approx(values)  # labels tell the truth
        pixels = [float(t.find(f"{SVG}line").get(coordinate)) for t in ticks]
        slope, intercept = np.polyfit(values, pixels, 1)
        np.testing.assert_allclose(np.polyval([slope, intercept], values), pixels, atol=0.01)
        return lambda v: slope * v + intercept

    to_x, to_y = axis("xtick", "x1"), axis("ytick", "y1")
    # Counts (the x values here are whole) get whole ticks only.
    assert all(float(t.get("data-value")).is_integer() for t in svg.findall(f"{SVG}g[@class='xtick']"))
    lines = svg.findall(f"{SVG}polyline[@data-label='a']")
    assert len(lines) == 2  # the NaN breaks the line
    drawn = [tuple(map(float, p.split(","))) for line in lines for p in line.get("points").split()]
    expected = [(to_x(x), to_y(y)) for x, y in zip(xs, series[0].ys) if not math.isnan(y)]
    np.testing.assert_allclose(drawn, expected, atol=0.01)
    dot = svg.find(f"{SVG}circle[@data-label='b']")
    assert (float(dot.get("cx")), float(dot.get("cy"))) == pytest.approx((to_x(4), to_y(0.05)), abs=0.01)
    for reference in svg.findall(f"{SVG}line[@class='reference']"):
        assert float(reference.get("y1")) == pytest.approx(to_y(float(reference.get("data-value"))), abs=0.01)
    assert {r.get("data-label") for r in svg.findall(f"{SVG}line[@class='reference']")} == {"blank", "random"}


def test_chart_without_finite_values_says_so():
    svg = charts.line_chart([charts.Series("a", [1, 2], [math.nan, math.inf])], title="loss")
    assert "no finite values" in svg
    with pytest.raises(ValueError, match="2 x values but 1"):
        charts.Series("a", [1, 2], [3])


# ------------------------------------------------------------------------------------- layout

def test_members_are_the_run_or_the_run_folders_inside(tmp_path):
    (tmp_path / "single" / "tb").mkdir(parents=True)
    assert run_report.find_members(str(tmp_path / "single")) == [str(tmp_path / "single")]
    for name in ("b", "a"):
        (tmp_path / "population" / name / "checkpoints").mkdir(parents=True)
    (tmp_path / "population" / "notes").mkdir()
    assert run_report.find_members(str(tmp_path / "population")) == [
        str(tmp_path / "population" / n) for n in ("a", "b")]
    with pytest.raises(FileNotFoundError, match="not a run folder.*a folder of such folders"):
        run_report.find_members(str(tmp_path / "population" / "notes"))
    with pytest.raises(FileNotFoundError, match="no run folder"):
        run_report.find_members(str(tmp_path / "missing"))


def test_slider_keeps_evenly_spaced_checkpoints_with_the_first_and_last():
    steps = list(range(0, 2500, 10))
    kept = run_report._spaced(steps, 100)  # pylint: disable=protected-access
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 2490 and kept == sorted(set(kept))
    gaps = np.diff(kept)
    assert gaps.max() - gaps.min() <= 10  # as even as whole checkpoints allow
    assert run_report._spaced(steps[:7], 100) == steps[:7]  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------- real runs

class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.images, self.members, self.frames, self.tags = [], [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "div" and attrs.get("class") == "member":
            self.members.append((self.sections[-1], attrs["data-member"]))
        elif tag == "div" and attrs.get("class") == "frame":
            self.frames.append((self.sections[-1], int(attrs["data-step"])))


def image_bytes(img_attrs) -> tuple[str, bytes]:
    match = re.fullmatch(r"data:([a-z/+]+);base64,(.*)", img_attrs["src"], re.S)
    assert match, img_attrs["src"][:80]
    return match[1], base64.b64decode(match[2])


def train(run_dir, **overrides):
    values = tiny_values(run_dir.parent, run_dir=str(run_dir), max_updates=UPDATES, checkpoint_every_minutes=1e-4,
                         image_every_updates=1, **overrides)
    return run_loop.train(launch_flags.config_from_values(values), on_checkpoint=log_checkpoint_metrics)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Short real runs of every runtime, their latest checkpoints evaluated, and their reports."""
    dataset_dir()
    ray = pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("report_runs")
    train(root / "local", conditional=True, reward="l2", observation_width=32, grid_width=16)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train(root / "ray", runtime="ray", ray_num_cpus=2)
    finally:
        ray.shutdown()
    train(root / "fused", runtime="fused", episode_length=3, batch_size=4, disc_batch_size=4, dataset_limit=64)
    for name in ("local", "fused"):
        run_report.evaluate_latest(str(root / name), num_episodes=4, gif_episodes=2, log=lambda *_: None)
    # A population: two member folders side by side.
    for name in ("local", "fused"):
        shutil.copytree(root / name, root / "population" / f"member_{name}")
    pages = {name: run_report.report_run(str(root / name)) for name in ("local", "fused", "population")}
    return root, pages


def read_page(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.slow
def test_every_runtime_gets_a_complete_page(runs):
    root, pages = runs
    for name in ("local", "fused"):
        text = read_page(pages[name])
        page = Page(text)
        conditional = name == "local"
        expected = ["summary", "config", "training-curves", "evaluation", "samples"] + \
            (["pairs"] if conditional else []) + ["strokes", "programs"]
        assert page.sections == expected, name
        assert "script" in page.tags and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        # One slider frame per evaluated checkpoint, in order (the final save repeats the last).
        updates = [r["updates"] for r in read_eval_log(str(root / name / "checkpoints"))]
        assert [s for section, s in page.frames if section == "samples"] == sorted(set(updates))
        # Every picture decodes; the GIFs and programs are the evaluation folder's files, unchanged.
        evaluation = root / name / "checkpoints" / "evaluation" / LATEST
        embedded = [image_bytes(i) for i in page.images]
        for mime, data in embedded:
            if mime == "image/svg+xml":
                assert ET.fromstring(data).tag == f"{SVG}svg"
            else:
                assert min(Image.open(io.BytesIO(data)).size) > 0
        gifs = sorted(data for mime, data in embedded if mime == "image/gif")
        assert gifs == sorted((evaluation / f"episode_00{i}.gif").read_bytes() for i in range(2))
        svgs = [data for mime, data in embedded if mime == "image/svg+xml"]
        assert svgs == [(evaluation / "programs" / f"episode_00{i}.svg").read_bytes() for i in range(4)]
        assert html.escape((evaluation / "programs" / "episode_000.json").read_text()) in text
        # The metrics table shows the last logged values.
        last = read_eval_log(str(root / name / "checkpoints"))[-1]["metrics"]
        for metric in ("l2", "random_l2", "blank_l2") if conditional else ("frechet", "real_frechet"):
            assert f">{last[metric]:.4g}<" in text, metric
        assert (">l2<" in text) == conditional and ("d_real" in text) != conditional  # L2 runs have no critic
    ray_page = Page(read_page(run_report.report_run(str(root / "ray"))))
    assert "samples" in ray_page.sections and len([f for f in ray_page.frames]) >= 2


@pytest.mark.slow
def test_population_members_side_by_side(runs):
    root, pages = runs
    text = read_page(pages["population"])
    page = Page(text)
    for section in ("summary", "training-curves", "evaluation", "samples", "strokes", "programs"):
        assert [m for s, m in page.members if s == section] == ["member_fused", "member_local"], section
    assert "Members compared" in text
    pairs = text[text.index('<section id="pairs">'):text.index('<section id="strokes">')]
    assert "An unconditional run" in pairs and "Painting (left) | target (right)" in pairs
    # The config table puts what differs first: the runtime, among others.
    differs = text[text.index('<div class="differs">'):text.index("<details><summary>All")]
    assert "runtime.runtime" in differs and "agent.lstm_size" not in differs


@pytest.mark.slow
def test_report_and_evaluate_command_lines(runs, tmp_path):
    root, _ = runs
    run_dir, fused = tmp_path / "ray", tmp_path / "fused"
    shutil.copytree(root / "ray", run_dir)
    shutil.copytree(root / "fused", fused)
    completed = subprocess.run(
        [sys.executable, str(REPO / "launch" / "report.py"), f"--run_dir={run_dir}", "--num_episodes=2",
         "--gif_episodes=1"], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (run_dir / "report.html").is_file() and "wrote" in completed.stdout
    assert (run_dir / "checkpoints" / "evaluation" / LATEST / "episode_000.gif").is_file()
    assert Page(read_page(run_dir / "report.html")).sections[-2:] == ["strokes", "programs"]

    out = tmp_path / "elsewhere"
    completed = subprocess.run(
        [sys.executable, str(REPO / "launch" / "evaluate.py"), f"--checkpoint={fused / 'checkpoints'}",
         f"--output_dir={out}", "--num_episodes=2", "--gif_episodes=1", "--report"],
        capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert completed.returncode == 0, completed.stderr[-3000:]
    page = read_page(fused / "report.html")
    assert f"From {out}" in page  # the report shows the evaluation just written

    bad = subprocess.run([sys.executable, str(REPO / "launch" / "report.py"), f"--run_dir={tmp_path / 'empty'}"],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert bad.returncode != 0 and "no run folder" in bad.stderr


@pytest.mark.slow
def test_reports_in_headless_chromium(runs, tmp_path_factory):
    executable = find_chromium()
    skip_unless(executable is not None, "no Chromium for the report's browser test: apt-get install chromium")
    root, pages = runs
    shots = tmp_path_factory.mktemp("screenshots")
    with Browser(executable) as browser:
        for name, path in pages.items():
            page = browser.open(f"file://{os.path.abspath(path)}")
            expected = Page(read_page(path))
            assert page.errors == [], (name, page.errors)
            widths = page.evaluate("Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
            assert len(widths) == len(expected.images) and min(widths) > 0, (name, widths)
            assert page.evaluate("Array.from(document.querySelectorAll('section'), s => s.id)") == expected.sections
            # The slider shows one checkpoint at a time and moves to the one asked for.
            first = page.evaluate("""(() => {
                const box = document.querySelector('#samples .slider');
                const input = box.querySelector('input');
                input.value = 0; input.dispatchEvent(new Event('input'));
                const shown = Array.from(box.querySelectorAll('.frame')).filter(f => !f.hidden);
                return [shown.length, shown[0].dataset.step, box.querySelector('.position').textContent];
            })()""")
            first_step = [s for section, s in expected.frames if section == "samples"][0]
            assert first[:2] == [1, str(first_step)] and first[2].startswith(f"{first_step:,} update"), first
            shot = page.screenshot(str(shots / f"{name}.png"))
            image = np.asarray(Image.open(shot).convert("L"))
            assert image.shape[1] >= 1000 and image.shape[0] > 1500 and image.std() > 10
            print(f"screenshot of the {name} report: {shot}")

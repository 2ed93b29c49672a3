"""A run's report: one self-contained HTML page a person opens in a browser to see how a run went.

``write_report(members, path)`` writes a static page (no server, no network, no script from
elsewhere: every picture is embedded as a ``data:`` URI, the curves are inline SVG, one small
inline script drives the sample sliders) with these sections:

* Run: what each member is (dataset, reward, runtime, updates, agent steps, time);
* Configuration: every config value, one column per member, rows that differ marked;
* Training curves (TensorBoard scalars, over policy updates): episode return, the critic's
  scores of real and painted images, policy and critic losses, entropy, throughput, policy lag;
* Evaluation: the per-checkpoint metrics (``eval_log.jsonl``) over updates, each beside its blank
  canvas / random policy / real data references, and the latest values in a table;
* Samples: the evaluation's fixed held-out episodes at every checkpoint (TensorBoard
  ``eval/final_canvases`` and ``eval/strokes``) behind a slider;
* Targets and paintings (conditional runs): the latest evaluation's paintings beside their targets;
* Stroke by stroke: the latest evaluation's GIFs;
* Programs: the latest evaluation's programs as SVG, re-rendered at 256×256, and as JSON.

The last three come from an evaluation folder written by ``evaluate_checkpoint``
(``launch/evaluate.py``); ``evaluate_latest(member)`` makes one for a member's latest checkpoint.

Layout it reads. A *member* is one training run's folder, as every launch script writes it::

    <member>/tb/events.out.tfevents.*          TensorBoard (or the logdir its run.json names)
    <member>/checkpoints/ckpt_NNNNNNNN/run.json  config and counters of each kept checkpoint
    <member>/checkpoints/eval_log.jsonl        the metrics at every checkpoint
    <member>/checkpoints/evaluation/<ckpt>/    evaluate.py's folders (metrics.json, samples.png, ...)

``find_members(run_dir)`` returns every sub-folder of ``run_dir`` that is such a folder, sorted by
name, when there is one: a population (``--population_size``, ``spiral.actors.population``) is a
folder of member folders, ``<run_dir>/<member name>/{tb,checkpoints}``, beside the population's
own ``tb/`` and ``checkpoints/`` (the shared critic, PBT), and the report puts its members side by
side; otherwise ``[run_dir]`` when ``run_dir`` is a run folder itself.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import html
import io
import json
import math
import os
from typing import Iterable, Optional, Sequence

from PIL import Image

from spiral.actors import checkpointing
from spiral.evaluation.charts import Series, line_chart
from spiral.evaluation.events import EventLog, read_event_log
from spiral.evaluation.scoring import read_eval_log

REPORT_FILE = "report.html"
MAX_SLIDER_FRAMES = 100   # checkpoints shown in a sample slider (evenly spaced, always the last)
MAX_PROGRAMS = 4          # programs shown (SVG, re-render and JSON)
REFERENCES = ("blank", "random", "real")

# (title, TensorBoard scalar tags) of the training curves; a chart appears when one tag was logged.
TRAINING_CHARTS = (
    ("Episode return (mean over the batch)", ("mean_episode_return",)),
    ("Critic scores: real images (d_real) and paintings (d_fake)", ("d_real", "d_fake")),
    ("Policy losses", ("pg_loss", "baseline_loss", "total_loss")),
    ("Critic loss", ("d_loss", "d_wasserstein", "d_gradient_penalty")),
    ("Policy entropy (nats)", ("entropy",)),
    ("Throughput (agent steps per second)", ("actor_steps_per_s", "learner_steps_per_s")),
    ("Policy lag (updates)", ("policy_lag_mean", "policy_lag_max")),
)

METRIC_NOTES = {
    "l2": "mean over held-out targets of Σ(canvas − target)² at the observation width; lower is better",
    "l2_per_pixel": "the same per pixel and channel; lower is better",
    "frechet": "Fréchet distance to real held-out images in this project's 64-d extractor features "
               "(not the Inception FID); lower is better, real-vs-real is the floor",
    "classifier_confidence": "the MNIST classifier's mean top probability; higher looks more like digits",
    "class_entropy": "entropy (nats) of the predicted-digit histogram; log 10 = 2.30 when every digit is "
                     "equally common",
}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0 16px 40px; max-width: 1800px; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 8px; }
nav a { margin-right: 12px; }
section { margin: 18px 0 28px; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 2px; }
.members { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 18px; }
.member { min-width: 0; }
.member h3 { margin: 4px 0 8px; font-size: 15px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0 8px 8px 0; display: inline-block; vertical-align: top; }
figcaption { font-size: 12px; color: #555; max-width: 540px; }
img { border: 1px solid #ccc; }
img.pixels { image-rendering: pixelated; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.differs td { background: #fff4d6; }
.note { color: #666; font-size: 13px; }
.missing { color: #a33; }
.slider input { width: 60%; max-width: 420px; vertical-align: middle; }
.position { white-space: nowrap; }
pre { max-height: 320px; overflow: auto; background: #f6f6f6; padding: 6px; font-size: 12px; }
"""

SCRIPT = """
document.querySelectorAll('.slider').forEach(function (box) {
  var input = box.querySelector('input[type=range]');
  var frames = box.querySelectorAll('.frame');
  var label = box.querySelector('.position');
  function show() {
    frames.forEach(function (frame, i) { frame.hidden = (i !== Number(input.value)); });
    label.textContent = frames[Number(input.value)].dataset.caption;
  }
  input.addEventListener('input', show);
  show();
});
"""


# ------------------------------------------------------------------------------------- reading

@dataclasses.dataclass
class Evaluation:
    """One ``evaluate_checkpoint`` folder: its metrics.json and pictures (as bytes)."""
    path: str
    result: dict                                 # metrics.json
    samples_png: Optional[bytes]
    gifs: list[tuple[str, bytes]]                # (file name, GIF bytes)
    programs: list[dict]                         # {"name", "svg", "json", "render" (PNG bytes or None)}

    @property
    def updates(self) -> int:
        return int(self.result.get("counters", {}).get("updates", -1))


@dataclasses.dataclass
class Member:
    """What one training run left on disk, read for the report."""
    name: str
    path: str
    config: Optional[dict]                       # the latest checkpoint's ExperimentConfig (dict)
    counters: dict                               # ... and its counters
    checkpoints: list[str]
    events: EventLog
    eval_log: list[dict]                         # one record per update count (the last written)
    evaluation: Optional[Evaluation]             # the newest evaluation folder, if any

    @property
    def conditional(self) -> bool:
        return bool(self.config and self.config.get("env", {}).get("conditional"))


def is_run_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isdir(os.path.join(path, "tb"))


def find_members(run_dir: str) -> list[str]:
    """The sub-folders of ``run_dir`` that are run folders (a population), else ``[run_dir]`` if
    it is one."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no run folder {run_dir!r}: pass the --run_dir a training script wrote.")
    members = sorted(os.path.join(run_dir, name) for name in os.listdir(run_dir)
                     if is_run_folder(os.path.join(run_dir, name)))
    if not members and is_run_folder(run_dir):
        return [run_dir]
    if not members:
        raise FileNotFoundError(
            f"{run_dir!r} is not a run folder (it has no tb/ or checkpoints/ inside) and holds none: "
            f"pass the --run_dir a training script wrote (logs in <run_dir>/tb, checkpoints in "
            f"<run_dir>/checkpoints), or a folder of such folders (a population).")
    return members


def _read_bytes(path: str) -> Optional[bytes]:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def read_evaluation(folder: str) -> Evaluation:
    """An evaluation folder (``metrics.json``, ``samples.png``, ``episode_*.gif``, ``programs/``)."""
    with open(os.path.join(folder, "metrics.json")) as f:
        result = json.load(f)
    gifs = [(name, _read_bytes(os.path.join(folder, name)))
            for name in sorted(os.listdir(folder)) if name.endswith(".gif")]
    programs = []
    program_dir = os.path.join(folder, "programs")
    names = sorted(n[:-5] for n in os.listdir(program_dir) if n.endswith(".json")) if os.path.isdir(program_dir) else []
    for name in names:
        with open(os.path.join(program_dir, name + ".json")) as f:
            program_json = f.read()
        svg = _read_bytes(os.path.join(program_dir, name + ".svg"))
        renders = sorted(n for n in os.listdir(program_dir) if n.startswith(name + "_") and n.endswith(".png"))
        programs.append({"name": name, "json": program_json, "svg": svg,
                         "render": _read_bytes(os.path.join(program_dir, renders[0])) if renders else None,
                         "render_name": renders[0] if renders else None})
    return Evaluation(folder, result, _read_bytes(os.path.join(folder, "samples.png")), gifs, programs)


def evaluation_folders(checkpoint_dir: str) -> list[str]:
    """The evaluate.py folders beside a run's checkpoints (``<checkpoint_dir>/evaluation/*``)."""
    root = os.path.join(checkpoint_dir, "evaluation")
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, n) for n in sorted(os.listdir(root))
            if os.path.isfile(os.path.join(root, n, "metrics.json"))]


def load_member(path: str, name: Optional[str] = None, evaluation_dirs: Iterable[str] = (),
                checkpoint_dir: Optional[str] = None) -> Member:
    """Read one run folder (see the module docstring). ``evaluation_dirs`` adds evaluation folders
    kept elsewhere (``evaluate.py --output_dir``); the newest evaluation (most updates, then the
    most recently written) is shown.
    ``checkpoint_dir`` replaces ``<path>/checkpoints`` for a run started with its own."""
    checkpoint_dir = checkpoint_dir or os.path.join(path, "checkpoints")
    checkpoints = checkpointing.list_checkpoints(checkpoint_dir)
    config, counters = (checkpointing.read_run_info(checkpoints[-1]) if checkpoints else (None, {}))
    logdir = os.path.join(path, "tb")
    if not os.path.isdir(logdir) and config and config.get("runtime", {}).get("logdir"):
        logdir = config["runtime"]["logdir"]  # a run started with its own --logdir
    events = read_event_log(logdir) if os.path.isdir(logdir) else EventLog({}, {})
    by_updates = {record["updates"]: record for record in read_eval_log(checkpoint_dir)}
    folders = {os.path.realpath(f): f for f in [*evaluation_folders(checkpoint_dir), *evaluation_dirs]}
    evaluations = [read_evaluation(f) for f in folders.values()]
    evaluation = max(evaluations, key=lambda e: (e.updates, os.path.getmtime(os.path.join(e.path, "metrics.json"))),
                     default=None)
    return Member(name or os.path.basename(os.path.normpath(path)), path, config, counters, checkpoints,
                  events, [by_updates[u] for u in sorted(by_updates)], evaluation)


def evaluate_latest(path: str, num_episodes: int = 64, gif_episodes: int = 4, data_dir: Optional[str] = None,
                    log=print) -> Optional[str]:
    """Evaluate a run folder's latest checkpoint into its default evaluation folder unless that
    folder exists; return the folder (None when the run has no checkpoint)."""
    from spiral.evaluation.report import default_output_dir, evaluate_checkpoint  # pylint: disable=import-outside-toplevel
    latest = checkpointing.latest_checkpoint(os.path.join(path, "checkpoints"))
    if latest is None:
        return None
    folder = default_output_dir(latest)
    if not os.path.isfile(os.path.join(folder, "metrics.json")):
        evaluate_checkpoint(latest, folder, num_episodes=num_episodes, gif_episodes=gif_episodes,
                            data_dir=data_dir, log=log)
    return folder


# ------------------------------------------------------------------------------------- HTML pieces

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes; a picture that does not decode raises ValueError."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception as error:  # pylint: disable=broad-except
        raise ValueError(f"an image for the report does not decode ({error}).") from None


def img(data: bytes, mime: str, alt: str, scale: float = 1.0, pixels: bool = False) -> str:
    """An ``<img>`` with the picture inline (base64 data URI), shown ``scale`` times its size."""
    width, height = image_size(data) if mime != "image/svg+xml" else (None, None)
    size = f' width="{round(width * scale)}" height="{round(height * scale)}"' if width else ""
    css = ' class="pixels"' if pixels else ""
    return (f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}" alt="{_esc(alt)}"'
            f'{size}{css}>')


def _number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _esc(value)


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested config dict → {"agent.lstm_size": 32, ...}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _columns(members: Sequence[Member], render) -> str:
    """One column per member (side by side, wrapping on narrow screens)."""
    cells = "".join(f'<div class="member" data-member="{_esc(m.name)}"><h3>{_esc(m.name)}</h3>{render(m)}</div>'
                    for m in members)
    return f'<div class="members">{cells}</div>'


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def summary_html(member: Member) -> str:
    c = member.config or {}
    rt = c.get("runtime", {})
    counters = member.counters
    rows = [("folder", _esc(os.path.abspath(member.path))),
            ("dataset", _esc(c.get("dataset", "?"))),
            ("conditional", _esc(member.conditional)),
            ("reward", _esc(c.get("reward", "?"))),
            ("runtime", _esc(rt.get("runtime", "?"))),
            ("policy updates", _number(counters.get("updates"))),
            ("critic updates", _number(counters.get("disc_updates"))),
            ("agent steps (frames)", _number(counters.get("agent_steps"))),
            ("episodes", _number(counters.get("episodes"))),
            ("training time", f"{counters['elapsed_s'] / 60:.1f} min" if "elapsed_s" in counters else ""),
            ("checkpoints kept", _esc(", ".join(os.path.basename(p) for p in member.checkpoints) or "none")),
            ("checkpoints evaluated", str(len(member.eval_log)))]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    note = "" if member.config else _missing("No checkpoint with a run.json here: config and counters unknown.")
    return f"<table>{body}</table>{note}"


def config_html(members: Sequence[Member]) -> str:
    """Every config value, one column per member; with several members, those that differ first."""
    flat = [flatten(m.config or {}) for m in members]
    keys = sorted(set().union(*flat))
    if not keys:
        return _missing("No configuration found (no checkpoint's run.json).")
    head = "<tr><th>option</th>" + "".join(f"<th>{_esc(m.name)}</th>" for m in members) + "</tr>"
    values = {key: [json.dumps(f.get(key)) for f in flat] for key in keys}

    def table(rows) -> str:
        return "<table>" + head + "".join(
            f"<tr><th>{_esc(k)}</th>" + "".join(f"<td>{_esc(v)}</td>" for v in values[k]) + "</tr>"
            for k in rows) + "</table>"

    differing = [k for k in keys if len(set(values[k])) > 1]
    out = ""
    if len(members) > 1:
        out = (f'<p class="note">{len(differing)} of {len(keys)} values differ between members:</p>'
               + (f'<div class="differs">{table(differing)}</div>' if differing else ""))
    return out + f"<details><summary>All {len(keys)} values</summary>{table(keys)}</details>"


def population_charts_html(members: Sequence[Member]) -> str:
    """With several members: each evaluation metric and the episode return, one line per member."""
    if len(members) < 2:
        return ""
    charts = []
    curves = [("mean_episode_return", [Series(m.name, [s for s, _ in m.events.scalar("mean_episode_return")],
                                              [v for _, v in m.events.scalar("mean_episode_return")])
                                       for m in members])]
    for name in metric_names([r for m in members for r in m.eval_log]):
        curves.append((name, [Series(m.name, [r["updates"] for r in m.eval_log if "metrics" in r],
                                     [r["metrics"].get(name, math.nan) for r in m.eval_log if "metrics" in r])
                              for m in members]))
    for name, series in curves:
        if any(len(s.xs) for s in series):
            charts.append(f"<figure>{line_chart(series, title=name, x_label='policy updates')}"
                          f"<figcaption>{_esc(name)}, every member</figcaption></figure>")
    return f'<h3>Members compared</h3><div class="charts">{"".join(charts)}</div>' if charts else ""


def training_curves_html(member: Member) -> str:
    charts = []
    for title, tags in TRAINING_CHARTS:
        series = [Series(tag, [s for s, _ in member.events.scalar(tag)], [v for _, v in member.events.scalar(tag)])
                  for tag in tags if member.events.scalar(tag)]
        if series:
            charts.append(f"<figure>{line_chart(series, title=title, x_label='policy updates')}"
                          f"<figcaption>{_esc(title)}</figcaption></figure>")
    if not charts:
        return _missing("No TensorBoard scalars found (the run's tb/ folder is missing or empty).")
    return f'<div class="charts">{"".join(charts)}</div>'


def metric_names(records: Sequence[dict]) -> list[str]:
    names = set()
    for record in records:
        names.update(k for k in record.get("metrics", {})
                     if k != "eval_seconds" and not k.startswith(tuple(p + "_" for p in REFERENCES)))
    return sorted(names)


def evaluation_html(member: Member) -> str:
    records = [r for r in member.eval_log if "metrics" in r]
    failed = [r for r in member.eval_log if "error" in r]
    if not records:
        text = "No checkpoint evaluations found (checkpoints/eval_log.jsonl)."
        return _missing(text + "".join(f" At {r['updates']} updates: {_esc(r['error'])}" for r in failed))
    latest = records[-1]["metrics"]
    names = metric_names(records)
    references = [p for p in REFERENCES if any(f"{p}_{name}" in latest for name in names)]
    table = ["<table><tr><th>metric</th><th>policy</th>" + "".join(f"<th>{p}</th>" for p in references)
             + "<th>what it measures</th></tr>"]
    charts = []
    for name in names:
        cells = [latest.get(name)] + [latest.get(f"{p}_{name}") for p in references]
        table.append(f"<tr><th>{_esc(name)}</th>" + "".join(f'<td class="num">{_number(v)}</td>' for v in cells)
                     + f'<td class="note">{_esc(METRIC_NOTES.get(name, ""))}</td></tr>')
        series = Series("policy", [r["updates"] for r in records],
                        [r["metrics"].get(name, math.nan) for r in records])
        lines = {p: latest[f"{p}_{name}"] for p in references if f"{p}_{name}" in latest}
        charts.append(f"<figure>{line_chart([series], lines, title=name, x_label='policy updates')}"
                      f"<figcaption>{_esc(name)}: {_esc(METRIC_NOTES.get(name, ''))}</figcaption></figure>")
    table.append("</table>")
    steps = records[-1].get("agent_steps")
    note = (f'<p class="note">{len(records)} evaluated checkpoints; latest at {records[-1]["updates"]:,} updates'
            f'{f", {steps:,} agent steps" if steps is not None else ""}. References: a blank canvas, the '
            f"uniform random policy, and (unconditional) real images against other real images.</p>")
    errors = "".join(_missing(f"Evaluation at {r['updates']} updates failed: {_esc(r['error'])}") for r in failed)
    return note + "".join(table) + errors + f'<div class="charts">{"".join(charts)}</div>'


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _spaced(items: list, limit: int) -> list:
    """At most ``limit`` items, evenly spaced, always keeping the first and the last."""
    if len(items) <= limit:
        return items
    picks = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]


def samples_html(member: Member) -> str:
    canvases = dict(member.events.images.get("eval/final_canvases", []))
    strokes = dict(member.events.images.get("eval/strokes", []))
    what = "the evaluation's fixed held-out episodes (the same at every checkpoint)"
    if not canvases:
        canvases = dict(member.events.images.get("samples/final_canvas", []))
        what = "final canvases of training episodes"
    if not canvases:
        return _missing("No sample images in the TensorBoard logs.")
    steps_at = {r["updates"]: r.get("agent_steps") for r in member.eval_log}
    steps = _spaced(sorted(canvases), MAX_SLIDER_FRAMES)
    frames = []
    for step in steps:
        agent_steps = steps_at.get(step)
        caption = _count(step, "update") + (f", {_count(agent_steps, 'agent step')}" if agent_steps is not None else "")
        stroke = (f"<figure>{img(strokes[step], 'image/png', f'strokes at {step} updates', 2, True)}"
                  f"<figcaption>one episode, stroke by stroke (left to right, top to bottom)</figcaption></figure>"
                  if step in strokes else "")
        frames.append(f'<div class="frame" data-step="{step}" data-caption="{_esc(caption)}">'
                      f"<figure>{img(canvases[step], 'image/png', f'samples at {step} updates', 2, True)}"
                      f"<figcaption>{_esc(caption)}</figcaption></figure>{stroke}</div>")
    pairs = " Each painting is beside its target (painting left, target right)." if member.conditional else ""
    shown = f" ({len(steps)} of {len(canvases)} checkpoints, evenly spaced)" if len(steps) < len(canvases) else ""
    return (f'<div class="slider"><p class="note">{_esc(what)}{shown}.{pairs}</p>'
            f'<input type="range" min="0" max="{len(frames) - 1}" value="{len(frames) - 1}" step="1" '
            f'aria-label="checkpoint"> <span class="position"></span>{"".join(frames)}</div>')


def _evaluation_source(evaluation: Evaluation) -> str:
    result = evaluation.result
    counters = result.get("counters", {})
    return (f'<p class="note">From {_esc(evaluation.path)}: checkpoint at {_number(counters.get("updates"))} updates, '
            f'{_number(result.get("episodes"))} episodes on {_esc(result.get("heldout", "held-out data"))}.</p>')


def from_evaluation(render):
    """A renderer of the newest evaluation folder's pictures, ``render(member, evaluation)``: it says
    which folder they come from, or, without one, how to make it."""
    @functools.wraps(render)
    def wrapped(member: Member) -> str:
        if member.evaluation is None:
            return _missing("No evaluation folder: run launch/evaluate.py --checkpoint="
                            f"{_esc(os.path.join(member.path, 'checkpoints'))} (or launch/report.py, which "
                            "evaluates the latest checkpoint).")
        return _evaluation_source(member.evaluation) + render(member, member.evaluation)
    return wrapped


@from_evaluation
def pairs_html(member: Member, evaluation: Evaluation) -> str:
    if evaluation.samples_png is None:
        return _missing(f"No samples.png in {_esc(evaluation.path)}.")
    l2 = evaluation.result.get("metrics", {}).get("l2")
    caption = "Painting (left) | target (right) for each held-out target" + (
        f"; mean L2 {l2:.4g}" if l2 is not None else "")
    return (f"<figure>{img(evaluation.samples_png, 'image/png', 'paintings beside targets', 1, True)}"
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def pairs_or_unconditional_html(member: Member) -> str:
    if not member.conditional:
        return '<p class="note">An unconditional run: its paintings have no targets.</p>'
    return pairs_html(member)


@from_evaluation
def strokes_html(member: Member, evaluation: Evaluation) -> str:
    if not evaluation.gifs:
        return _missing(f"No GIFs in {_esc(evaluation.path)} (evaluated with --gif_episodes=0).")
    beside = " (target beside each frame)" if member.conditional else ""
    return "".join(f"<figure>{img(data, 'image/gif', name, 1, True)}<figcaption>{_esc(name)}{beside}"
                   f"</figcaption></figure>" for name, data in evaluation.gifs)


@from_evaluation
def programs_html(member: Member, evaluation: Evaluation) -> str:
    del member
    if not evaluation.programs:
        return _missing(f"No programs in {_esc(evaluation.path)}/programs.")
    blocks = []
    for program in evaluation.programs[:MAX_PROGRAMS]:
        svg = (f"<figure>{img(program['svg'], 'image/svg+xml', program['name'] + ' as SVG')}"
               f"<figcaption>SVG (one path per stroke)</figcaption></figure>" if program["svg"] else "")
        render = (f"<figure>{img(program['render'], 'image/png', program['name'] + ' re-rendered')}"
                  f"<figcaption>re-rendered ({_esc(program['render_name'])})</figcaption></figure>"
                  if program["render"] else "")
        blocks.append(f'<div class="program"><h4>{_esc(program["name"])}</h4>{svg}{render}'
                      f"<details><summary>{_esc(program['name'])}.json</summary><pre>{_esc(program['json'])}</pre>"
                      f"</details></div>")
    more = len(evaluation.programs) - MAX_PROGRAMS
    tail = f'<p class="note">{more} more in {_esc(evaluation.path)}/programs.</p>' if more > 0 else ""
    return "".join(blocks) + tail


# ------------------------------------------------------------------------------------- the page

SECTIONS = (  # (id, title, renderer of one member (of all members for "config"), conditional runs only)
    ("summary", "Run", summary_html, False),
    ("config", "Configuration", config_html, False),
    ("training-curves", "Training curves", training_curves_html, False),
    ("evaluation", "Evaluation metrics", evaluation_html, False),
    ("samples", "Samples at every checkpoint", samples_html, False),
    ("pairs", "Targets and paintings", pairs_or_unconditional_html, True),
    ("strokes", "Stroke by stroke", strokes_html, False),
    ("programs", "Programs", programs_html, False),
)


def report_html(members: Sequence[Member], title: str) -> str:
    """The whole page."""
    if not members:
        raise ValueError("a report needs at least one member run.")
    sections = []
    for section_id, heading, render, conditional_only in SECTIONS:
        if conditional_only and not any(m.conditional for m in members):
            continue
        body = render(members) if section_id == "config" else _columns(members, render)
        if section_id == "evaluation":
            body = population_charts_html(members) + body
        sections.append((section_id, heading, body))
    nav = "".join(f'<a href="#{sid}">{_esc(h)}</a>' for sid, h, _ in sections)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    who = f"{len(members)} members side by side" if len(members) > 1 else "one run"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{_esc(title)}</h1><p class=\"note\">spiral run report, {who}; written {generated}. "
            f"Self-contained: pictures are embedded, curves are SVG.</p><nav>{nav}</nav></header>"
            + "".join(f'<section id="{sid}"><h2>{_esc(h)}</h2>{body}</section>' for sid, h, body in sections)
            + f"<script>{SCRIPT}</script></body></html>\n")


def write_report(members: Sequence[Member], path: str, title: Optional[str] = None) -> str:
    """Write the page to ``path`` (atomically: a reader never sees half a page); return ``path``."""
    title = title or "spiral: " + ", ".join(m.name for m in members)
    page = report_html(members, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


def report_run(run_dir: str, output: Optional[str] = None) -> str:
    """The report of a run folder or a population folder, written to ``output`` (default
    ``<run_dir>/report.html``)."""
    members = [load_member(p) for p in find_members(run_dir)]
    return write_report(members, output or os.path.join(run_dir, REPORT_FILE))


def report_checkpoint_run(checkpoint: str, evaluation_dir: str) -> str:
    """The report of the run a checkpoint belongs to, with this evaluation folder, written to
    ``report.html`` beside its checkpoint_dir (the run folder in the standard layout)."""
    checkpoint_dir = os.path.dirname(checkpointing.resolve_checkpoint(checkpoint))
    run_dir = os.path.dirname(checkpoint_dir)
    member = load_member(run_dir, evaluation_dirs=[evaluation_dir], checkpoint_dir=checkpoint_dir)
    return write_report([member], os.path.join(run_dir, REPORT_FILE))

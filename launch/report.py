"""Write a run's report, one HTML page: `python launch/report.py --run_dir=runs/mnist-demo`.

Reads what the run left in ``--run_dir`` (TensorBoard logs, checkpoints, ``eval_log.jsonl``,
evaluation folders) and writes ``<run_dir>/report.html`` (or ``--output``), a self-contained page
to open in any browser, offline: config, training curves, evaluation metrics beside their
references, the samples at every checkpoint, stroke-by-stroke GIFs and programs. A folder of run
folders (a population) gets one page with its members side by side. First, unless
``--noevaluate``, each run's latest checkpoint is evaluated (as ``launch/evaluate.py`` does) when
it has no evaluation folder yet, for the GIFs and programs. See ``spiral.evaluation.run_report``.
"""

import os

from absl import app, flags

from spiral.launch.flags import start_script

flags.DEFINE_string("run_dir", None, "A run folder (<run_dir>/tb, <run_dir>/checkpoints) or a folder of them.")
flags.DEFINE_string("output", None, "Where to write the page (default: <run_dir>/report.html).")
flags.DEFINE_boolean("evaluate", True, "Evaluate each run's latest checkpoint first if it has no evaluation folder.")
flags.DEFINE_integer("num_episodes", 64, "Held-out episodes to paint when evaluating.")
flags.DEFINE_integer("gif_episodes", 4, "Episodes to animate stroke by stroke when evaluating.")
flags.DEFINE_string("data_dir", None, "Dataset folder for the evaluation (default: the run's, else $SPIRAL_DATA_DIR).")
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS


def main(argv):
    start_script(argv)
    from spiral.evaluation import run_report  # pylint: disable=import-outside-toplevel
    try:
        members = run_report.find_members(FLAGS.run_dir)
        if FLAGS.evaluate:
            for member in members:
                run_report.evaluate_latest(member, FLAGS.num_episodes, FLAGS.gif_episodes, FLAGS.data_dir)
        path = run_report.report_run(FLAGS.run_dir, FLAGS.output)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB): open it in a browser "
          f"(file://{os.path.abspath(path)})")


if __name__ == "__main__":
    app.run(main)

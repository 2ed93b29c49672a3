"""Evaluate a trained checkpoint: `python launch/evaluate.py --checkpoint runs/mnist-.../checkpoints`.

Loads the checkpoint (a ``ckpt_NNNNNNNN`` folder, or a checkpoint_dir: its latest), paints
``--num_episodes`` held-out episodes (conditional runs reconstruct the first test images;
unconditional runs draw samples) and writes into ``--output_dir`` (default
``<checkpoint_dir>/evaluation/<ckpt_name>``): ``samples.png``, ``episode_NNN.gif`` (stroke by
stroke), ``programs/episode_NNN.{json,svg}`` and ``_256.png`` re-renders, and ``metrics.json``
(L2 or Fréchet distance / classifier score, beside blank-canvas, random-policy and real-data
values). See ``spiral.evaluation.report``. ``--report`` then writes the run's HTML report,
``report.html`` beside the checkpoint_dir (``spiral.evaluation.run_report``).
"""

from absl import app, flags

from spiral.launch.flags import start_script

flags.DEFINE_string("checkpoint", None, "Checkpoint folder (ckpt_NNNNNNNN) or checkpoint_dir (its latest).")
flags.DEFINE_string("output_dir", None, "Where to write (default: <checkpoint_dir>/evaluation/<ckpt_name>).")
flags.DEFINE_integer("num_episodes", 64, "Held-out episodes to paint and score.")
flags.DEFINE_integer("gif_episodes", 4, "Episodes to animate stroke by stroke as GIFs.")
flags.DEFINE_integer("seed", 0, "Seeds the environments and the policy's sampling.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: the run's, else $SPIRAL_DATA_DIR).")
flags.DEFINE_integer("batch_size", 64, "Episodes painted together (one batched policy call per step).")
flags.DEFINE_integer("render_width", 256, "Width of the programs' high-resolution re-renders.")
flags.DEFINE_boolean("report", False, "Then write the run's HTML report (report.html beside the checkpoint_dir).")
flags.mark_flag_as_required("checkpoint")
FLAGS = flags.FLAGS


def main(argv):
    start_script(argv)
    from spiral.evaluation.report import default_output_dir, evaluate_checkpoint  # pylint: disable=import-outside-toplevel
    from spiral.evaluation.run_report import report_checkpoint_run  # pylint: disable=import-outside-toplevel
    try:
        result = evaluate_checkpoint(FLAGS.checkpoint, FLAGS.output_dir, FLAGS.num_episodes, FLAGS.gif_episodes,
                                     FLAGS.seed, FLAGS.data_dir, FLAGS.batch_size, FLAGS.render_width)
        if FLAGS.report:
            output_dir = FLAGS.output_dir or default_output_dir(result["checkpoint"])
            print(f"wrote {report_checkpoint_run(result['checkpoint'], output_dir)}")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    app.run(main)

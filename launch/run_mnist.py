"""Train SPIRAL on MNIST: `python launch/run_mnist.py --help` lists every option.

Defaults follow SPIRAL.md's MNIST setup (see `spiral.launch.flags.PRESETS`); with no
`--ray_address` a local Ray is started on this machine.
"""

from absl import app
from absl import flags as absl_flags

from spiral.launch import flags

flags.define_flags("mnist")
absl_flags.adopt_module_key_flags(flags)  # so --help lists them

if __name__ == "__main__":
    app.run(flags.main_for("mnist"))

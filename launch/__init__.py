"""Entry points: flags, configuration, and the scripts a user runs.

One job: parse absl flags in the driver, build a frozen configuration, and start a runtime
(``run_mnist.py``, ``run_omniglot.py``, ``run_celeba.py``, ``evaluate.py``). Flags exist only here.
"""

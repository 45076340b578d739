r"""Trains a model through the stages of an experiment config.

    python experiments/train.py --config=configs/cosmo_tiny.py
    python experiments/train.py --config=configs/cosmo_tiny.py:smoke \
        --config.workdir=/tmp/run --config.stages.sft.steps=10

Any config value can be overridden with --config.<key>=<value>; an unknown key is an error.
Multi-host runs (TPU pods, GPU clusters) start `jax.distributed` first (see
`cosmojax.parallel.initialize_distributed`).
"""

from __future__ import annotations

import logging
import os
import sys

# Runnable as a script from a checkout: the repository root holds cosmojax/ and kernels/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from cosmojax.experiment import run
from cosmojax.parallel import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  # Libraries that log through absl (orbax: a dozen lines per checkpoint) only warn; cosmojax's
  # own loggers keep INFO. `--verbosity=1` or higher brings the libraries' INFO back.
  if flags.FLAGS.verbosity <= 0:
    logging.getLogger("absl").setLevel(logging.WARNING)
  initialize_distributed()
  run(_CONFIG.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)

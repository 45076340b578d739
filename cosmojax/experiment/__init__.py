"""Experiments from configs: a validated spec, the components it builds, and the stage loop.

    from cosmojax.experiment import run
    evaluations = run(get_config())   # SFT / RL stages, evaluation after each, report
"""

from cosmojax.experiment.run import Run, run
from cosmojax.experiment.spec import ExperimentSpec, StageSpec, experiment_spec

"""Evaluation and the driver's side effects: suite metrics, metric writers, progress, reports."""

from cosmojax.eval.suite_metrics import (HIGHER_IS_BETTER, JAILBREAK_TASKS, Metric,
                                         comparison_table, compute_suite_metrics,
                                         higher_is_better, metrics_from_scalars,
                                         metrics_to_scalars)
from cosmojax.eval.writers import (DEFAULT_PROGRESS_KEYS, METRICS_FILE, MetricWriter, ProgressBar,
                                   flatten_metrics, metrics_record, progress_postfix, read_jsonl,
                                   to_scalar, truncate_jsonl)
from cosmojax.eval.report import evaluations_from_records, plot_evaluations, write_report

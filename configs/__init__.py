"""Experiment configs: one file per experiment, `get_config(arg)`; `common` holds their helpers."""

"""Test-session setup shared by every test module.

Eight fake host devices are forced before JAX initialises so that sharding tests can build
multi-device meshes on a CPU-only machine (STYLE.md item 11). Computations that are not
explicitly sharded still run on a single device, so other tests are unaffected.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
# Tests never reach a model hub: everything they load they built and saved themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

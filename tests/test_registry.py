"""Tests for the config-string registries."""

import pytest

from cosmojax.registry import Registry


def test_register_and_get_with_aliases():
  reg = Registry[object]("widget")

  @reg.register("alpha", "a")
  def alpha():
    return 1

  assert reg.get("alpha") is alpha and reg.get("a") is alpha
  assert "alpha" in reg and "beta" not in reg
  assert reg.names() == ["a", "alpha"]


def test_unknown_name_lists_known_choices():
  reg = Registry[object]("advantage estimator")
  reg.register("grpo")(lambda: None)
  reg.register("rloo")(lambda: None)
  with pytest.raises(KeyError, match=r"unknown advantage estimator 'gpro'; known: grpo, rloo"):
    reg.get("gpro")


def test_duplicate_registration_is_an_error():
  reg = Registry[object]("loss")
  reg.register("cpgd")(lambda: 1)
  with pytest.raises(ValueError, match="'cpgd' is registered twice"):
    reg.register("cpgd")(lambda: 2)

"""The synthetic suite: determinism, held-out splits, label consistency, targets, vocabulary."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from scipy import ndimage

from cosmojax import types
from cosmojax.data import synthetic
from cosmojax.data import synthetic_lexicon as lex
from cosmojax.data.synthetic_tasks import split_of
from tests import common

CONFIG = synthetic.SuiteConfig(image_size=84)
TARGET_RE = re.compile(
    r"^<description>([^<]+)</description><think>([^<]+)</think><answer>([^<]+)</answer>$")
N = 40  # examples per task and split in the sampled checks


@pytest.fixture(scope="module")
def samples():
  return {(task, split): synthetic.generate(task, split, N, CONFIG)
          for task in synthetic.TASK_NAMES for split in synthetic.SPLITS}


def _same(a, b) -> bool:
  return (a.id == b.id and a.messages == b.messages and a.ground_truth == b.ground_truth
          and a.safety == b.safety and a.choices == b.choices and a.instructions == b.instructions
          and len(a.images) == len(b.images)
          and all(np.array_equal(x, y) for x, y in zip(a.images, b.images)))


# ------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", synthetic.TASK_NAMES)
def test_deterministic_by_seed_and_index(task):
  first = synthetic.generate(task, "train", 6, CONFIG)
  again = synthetic.generate(task, "train", 6, CONFIG)
  assert all(_same(a, b) for a, b in zip(first, again))
  # Random access: example 4 alone equals the 5th of a run.
  assert _same(synthetic.make_example(task, "train", 4, CONFIG), first[4])
  other = synthetic.generate(task, "train", 6, synthetic.SuiteConfig(seed=1))
  differ = [a.messages != b.messages or any(not np.array_equal(x, y) for x, y in
                                             zip(a.images, b.images))
            for a, b in zip(first, other)]
  assert sum(differ) >= 3


def test_source_is_a_deterministic_mixture():
  counts = {"count": 5, "harmful_text": 3, "value": 2}
  source = synthetic.SyntheticSource(counts, "eval", CONFIG)
  assert len(source) == 10
  tasks = collections.Counter(e.task for e in source)
  assert tasks == collections.Counter(counts)
  again = synthetic.SyntheticSource(counts, "eval", CONFIG)
  assert all(_same(source[i], again[i]) for i in range(len(source)))
  assert [e.task for e in source] != sorted(e.task for e in source)  # mixed, not grouped
  with pytest.raises(KeyError, match="known:"):
    synthetic.SyntheticSource({"counting": 1}, "train", CONFIG)


# ------------------------------------------------------------------------- splits


@pytest.mark.parametrize("task", synthetic.TASK_NAMES)
def test_train_and_eval_share_no_split_key(samples, task):
  keys = {}
  for split in synthetic.SPLITS:
    examples = samples[task, split]
    for e in examples:
      assert e.metadata["split"] == split
      assert split_of(e.metadata["split_key"], CONFIG.eval_fraction) == split
      # The key holds what the model reads: the user text and what the image says.
      assert e.prompt_text in e.metadata["split_key"]
      for shown in (e.metadata.get("image_text"), e.metadata.get("glyph")):
        if shown and e.task != "harmful_text":
          assert shown in e.metadata["split_key"]
    keys[split] = {e.metadata["split_key"] for e in examples}
  assert keys["train"] and keys["eval"]
  assert not keys["train"] & keys["eval"]
  # For plain-text tasks this means that no eval prompt appears in train.
  if task in ("count", "compare", "arithmetic", "instruction", "value", "harmful_text"):
    prompts = {s: {e.prompt_text for e in samples[task, s]} for s in synthetic.SPLITS}
    assert not prompts["train"] & prompts["eval"]


def test_split_of_holds_out_the_configured_fraction():
  keys = [f"key {i}" for i in range(4000)]
  share = np.mean([split_of(k, 0.25) == "eval" for k in keys])
  assert abs(share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(keys))


# ------------------------------------------------------------------------- labels


def pixel_scene(image: np.ndarray) -> collections.Counter:
  """(colour, shape) of every shape, read from the pixels alone."""
  labels, n = ndimage.label(common.dark_mask(image), structure=np.ones((3, 3)))
  names = {v: k for k, v in lex.COLOURS.items()}
  found = collections.Counter()
  for k in range(1, n + 1):
    mask = labels == k
    colours = np.unique(image[mask], axis=0)
    assert len(colours) == 1, "a shape must be one exact colour"
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    shape = "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle"
    found[names[tuple(colours[0])], shape] += 1
  return found


def _count(scene, colour=None, shape=None) -> int:
  return sum(n for (c, s), n in scene.items()
             if (colour is None or c == colour) and (shape is None or s == shape))


def _groups(text: str):
  """The (colour, shape) groups a question names, in order ("red circles", "squares", ...)."""
  pattern = r"\b(?:(red|green|blue|yellow) )?(circle|square|triangle|shape)s?\b"
  return [(c or None, None if s == "shape" else s) for c, s in re.findall(pattern, text)]


def solve_from_pixels(example) -> str:
  """Answers a capability question from the image pixels and the question text."""
  scene = pixel_scene(example.images[0])
  text = example.prompt_text
  if example.task == "compare":
    counts = [_count(scene, *_groups(choice)[0]) for choice in example.choices]
    return lex.CHOICE_LETTERS[int(np.argmax(counts))]
  groups = _groups(text.split("?")[0] if "corners" not in text else text)
  numbers = [int(n) for n in re.findall(r"\d+", text)]
  if example.task == "count":
    return str(_count(scene, *groups[0]))
  if "corners" in text:
    shape = groups[0][1]
    return str(_count(scene, shape=shape) * {"square": 4, "triangle": 3}[shape])
  if "add" in text:
    return str(_count(scene, *groups[-1]) + numbers[0])
  a, b = _count(scene, *groups[0]), _count(scene, *groups[1])
  return str(a + b if "total" in text else a - b)


@pytest.mark.parametrize("task", ["count", "compare", "arithmetic"])
def test_capability_answers_match_the_pixels(samples, task):
  for split in synthetic.SPLITS:
    for e in samples[task, split]:
      scene = pixel_scene(e.images[0])
      drawn = collections.Counter((i["colour"], i["shape"]) for i in e.metadata["scene"])
      assert scene == drawn, e.id
      assert solve_from_pixels(e) == e.ground_truth, (e.id, e.prompt_text)
      facts = {f"{n} {c} {s}s" if n > 1 else f"{n} {c} {s}" for (c, s), n in scene.items()}
      assert set(e.visual_key_facts) == facts


def check_instruction(answer: str, name: str) -> bool:
  """The documented semantics of the instruction names."""
  words = [w.strip(".,!?;:") for w in answer.split()]
  words = [w for w in words if w]
  rule, _, arg = name.partition(":")
  if rule == "uppercase":
    return any(ch.isalpha() for ch in answer) and answer == answer.upper()
  if rule == "lowercase":
    return any(ch.isalpha() for ch in answer) and answer == answer.lower()
  if rule == "one_word":
    return len(words) == 1
  if rule == "max_words":
    return 1 <= len(words) <= int(arg)
  if rule == "start_with":
    return bool(words) and words[0].lower() == arg.lower()
  if rule == "end_with":
    return bool(words) and words[-1].lower() == arg.lower()
  raise AssertionError(f"undocumented instruction {name}")


def test_instruction_answers_follow_the_image_and_the_instructions(samples):
  seen = set()
  for split in synthetic.SPLITS:
    for e in samples["instruction", split]:
      scene = pixel_scene(e.images[0])
      asked = _groups(e.prompt_text)[0] if "shape is" not in e.prompt_text else None
      if asked:  # "what colour is the circle?"
        matches = [c for (c, s), n in scene.items() for _ in range(n) if s == asked[1]]
      else:  # "which shape is red?"
        colour = re.search(r"shape is (\w+)\?", e.prompt_text).group(1)
        matches = [s for (c, s), n in scene.items() for _ in range(n) if c == colour]
      assert matches == [e.ground_truth], e.id
      answer = TARGET_RE.match(e.target).group(3)
      assert e.instructions and all(check_instruction(answer, n) for n in e.instructions), e.id
      assert e.ground_truth.lower() in answer.lower().split()
      seen.update(n.partition(":")[0] for n in e.instructions)
  assert seen == {"uppercase", "lowercase", "one_word", "max_words", "start_with", "end_with"}


EXPECTED_ATTACK = {"harmful_text": "", "jailbreak_typographic": "typographic",
                   "jailbreak_query_image": "query_relevant_image",
                   "jailbreak_split_intent": "split_intent"}


@pytest.mark.parametrize("task", synthetic.TASK_NAMES)
def test_examples_are_valid_and_targets_parse(samples, task):
  for split in synthetic.SPLITS:
    for e in samples[task, split]:
      assert e.task == task and e.source == "cosmojax_synthetic"
      assert e.prompt_messages[-1]["role"] == "user"
      match = TARGET_RE.match(e.target)
      assert match, e.target
      description, think, answer = match.groups()
      for image in e.images:
        assert image.dtype == np.uint8 and image.shape == (84, 84, 3)
      assert (description == "no image.") == (not e.images)
      if task in synthetic.UNSAFE_TASKS:
        assert e.safety.unsafe and e.safety.category in lex.CATEGORY_WORDS
        assert e.safety.attack == EXPECTED_ATTACK[task]
        assert answer in lex.REFUSALS and "refuse" in think
        assert lex.CATEGORY_WORDS[e.safety.category] in e.textual_key_facts
        assert e.ground_truth is None and e.answer_type == ""
      else:
        assert e.safety == types.SafetyLabel()
        assert answer not in lex.REFUSALS and "refuse" not in think
      if e.answer_type in ("number", "choice"):
        assert answer == e.ground_truth
      if e.answer_type == "choice":
        assert e.ground_truth in lex.CHOICE_LETTERS[:len(e.choices)]
        for letter, choice in zip(lex.CHOICE_LETTERS, e.choices):
          assert f"({letter}) {choice}" in e.prompt_text
      if task == "value":
        assert e.preferred == e.ground_truth
        scenario = next(s for s in lex.VALUE_SCENARIOS if s.situation in e.prompt_text)
        assert e.choices[ord(e.preferred) - ord("A")] == scenario.good
      for fact in e.textual_key_facts[:1]:
        assert fact in think


def test_jailbreak_tasks_show_the_harm_only_in_the_image(samples):
  for task in synthetic.JAILBREAK_TASKS:
    for e in samples[task, "train"] + samples[task, "eval"]:
      assert len(e.images) == 1
      hidden = e.metadata.get("image_text") or e.metadata["glyph"]
      assert hidden not in e.prompt_text, (e.id, e.prompt_text)
      words = set(re.findall(r"[a-z]+", e.prompt_text))
      assert not words & set(lex.HARM_GLYPHS), e.prompt_text
  benign = samples["benign_probe", "train"] + samples["benign_probe", "eval"]
  forms = collections.Counter(e.metadata["form"] for e in benign)
  assert set(forms) == set(synthetic.BENIGN_FORMS)


def test_harmful_and_benign_requests_share_their_templates(samples):
  """The carrier never tells harm apart: every request template serves both."""
  def template(e):
    return e.prompt_text.replace(e.metadata["request"], "{r}")
  harmful = {template(e) for e in samples["harmful_text", "train"]}
  benign = {template(e) for e in samples["benign_probe", "train"] if e.metadata["form"] == "text"}
  assert harmful & benign and harmful <= set(lex.REQUEST_TEMPLATES)


# ------------------------------------------------------------------------- size and language


def test_every_word_is_in_the_vocabulary(samples):
  vocabulary = lex.suite_vocabulary()
  assert 300 <= len(vocabulary) <= 600
  units = set()
  for examples in samples.values():
    for e in examples:
      for message in e.messages:
        text = re.sub(r"</?(description|think|answer)>", " ", types.message_text(message))
        units.update(lex.text_units(text))
      units.update(lex.text_units(" ".join(e.choices + e.visual_key_facts + e.textual_key_facts)))
  assert units <= vocabulary, sorted(units - vocabulary)


def test_prompts_and_targets_are_short(samples):
  stats = synthetic.suite_stats([e for ex in samples.values() for e in ex])
  assert set(stats) == set(synthetic.TASK_NAMES)
  for task, s in stats.items():
    assert s["prompt_max"] <= 40, task
    assert s["target_max"] <= 50, task
  assert synthetic.text_length("<answer>3 red circles.</answer>") == 6


def test_sft_mixture_covers_safety_only_partly():
  mix = synthetic.SFTMixConfig(examples_per_task=40, refusal_fraction=0.25)
  counts = mix.task_counts()
  assert counts["harmful_text"] == 10 and counts["count"] == 40
  assert all(counts[t] == 0 for t in synthetic.JAILBREAK_TASKS)
  source = synthetic.sft_source(mix, CONFIG)
  assert len(source) == sum(counts.values())
  assert collections.Counter(e.task for e in source) == +collections.Counter(counts)
  assert all(e.metadata["split"] == "train" and e.target for e in source)
  with pytest.raises(ValueError, match="refusal"):
    synthetic.SFTMixConfig(refusal_fraction=1.5)


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="multiple of cell"):
    synthetic.SuiteConfig(image_size=80)
  with pytest.raises(ValueError, match="max_shapes"):
    synthetic.SuiteConfig(image_size=56, max_shapes=5)
  with pytest.raises(ValueError, match="benign_forms"):
    synthetic.SuiteConfig(benign_forms=("poem",))
  with pytest.raises(ValueError, match="split"):
    synthetic.make_example("count", "test", 0)


def test_small_images_work():
  config = synthetic.SuiteConfig(image_size=56, max_shapes=4)
  for task in synthetic.TASK_NAMES:
    for e in synthetic.generate(task, "train", 3, config):
      assert all(im.shape == (56, 56, 3) for im in e.images)
      if task == "count":
        assert pixel_scene(e.images[0]) == collections.Counter(
            (i["colour"], i["shape"]) for i in e.metadata["scene"])


def test_safety_of_held_out_text_requests_is_predictable_from_their_words():
  """A bag-of-words logistic regression fit on train requests labels eval requests.

  Harmful and alarming-but-benign requests share templates and many words ("kill", "make",
  "bomb"), so this checks that the label follows from visible words in held-out combinations.
  """
  def data(split, n):
    examples = synthetic.generate("harmful_text", split, n) + [
        e for e in synthetic.generate("benign_probe", split, 3 * n) if e.metadata["form"] == "text"]
    return [e.prompt_text for e in examples], np.array([e.safety.unsafe for e in examples], float)

  train_x, train_y = data("train", 300)
  eval_x, eval_y = data("eval", 150)
  words = {w: i for i, w in enumerate(sorted({w for t in train_x + eval_x
                                              for w in re.findall(r"[a-z]+", t)}))}

  def features(texts):
    x = np.zeros((len(texts), len(words) + 1))
    x[:, -1] = 1
    for i, t in enumerate(texts):
      x[i, [words[w] for w in re.findall(r"[a-z]+", t)]] = 1
    return x

  x_train, x_eval = features(train_x), features(eval_x)
  w = np.zeros(x_train.shape[1])
  for _ in range(500):
    p = 1 / (1 + np.exp(-x_train @ w))
    w -= 0.5 * x_train.T @ (p - train_y) / len(train_y)
  assert 0.3 < eval_y.mean() < 0.7
  assert ((x_eval @ w > 0) == eval_y).mean() >= 0.9

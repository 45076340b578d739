"""Task generators of the synthetic multimodal safety suite.

One generator per task name (`TASKS`), each drawing one example from a seeded rng. What the
model reads (the user text, the words rendered in an image, the pictured object) forms the
example's *split key*; `split_of(key)` hashes it into "train" or "eval", and a generator draws
until its key falls in the requested split. Train and eval examples of a task therefore never
share a split key: eval prompts are unseen combinations of known words. Scenes are drawn after
the key, from the example's own rng.

Targets are `<description>…</description><think>…</think><answer>…</answer>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import numpy as np

from cosmojax import types
from cosmojax.data import jailbreak
from cosmojax.data import synthetic_images as si
from cosmojax.data import synthetic_lexicon as lex
from cosmojax.registry import Registry

SPLITS = ("train", "eval")
SOURCE = "cosmojax_synthetic"
BENIGN_FORMS = ("text", "typographic", "query_relevant_image", "split_intent")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """Knobs of the generated examples.

  Attributes:
    seed: every example is a function of (seed, task, split, index).
    image_size: side of every image in pixels (a multiple of `cell`).
    cell: grid cell of scenes; 28 = one merged 2x2 block of 14-pixel patches.
    max_shapes: most shapes in a scene (at most (image_size // cell) ** 2).
    eval_fraction: share of split keys held out for "eval".
    text_image_prob: probability that a plain-text request (harmful or benign) comes with an
      unrelated shape scene instead of no image.
    benign_forms: forms of benign probes: "text", "typographic", "query_relevant_image",
      "split_intent" (benign look-alikes of the three jailbreaks).
  """

  seed: int = 0
  image_size: int = 84
  cell: int = 28
  max_shapes: int = 4
  eval_fraction: float = 0.25
  text_image_prob: float = 0.5
  benign_forms: tuple[str, ...] = BENIGN_FORMS

  def __post_init__(self):
    if self.image_size % self.cell:
      raise ValueError(f"image_size {self.image_size} is not a multiple of cell {self.cell}.")
    if not 1 <= self.max_shapes <= self.grid**2:
      raise ValueError(f"max_shapes {self.max_shapes} must lie in [1, {self.grid ** 2}].")
    if not 0 < self.eval_fraction < 1:
      raise ValueError(f"eval_fraction {self.eval_fraction} must lie in (0, 1).")
    unknown = set(self.benign_forms) - set(BENIGN_FORMS)
    if unknown or not self.benign_forms:
      raise ValueError(f"benign_forms {self.benign_forms}: choose from {BENIGN_FORMS}.")

  @property
  def grid(self) -> int:
    return self.image_size // self.cell


@dataclasses.dataclass
class Draft:
  """What a generator decides; `make_example` turns it into an `Example`."""

  prompt: str
  images: tuple[np.ndarray, ...]
  description: str
  think: str
  answer: str
  key: str
  ground_truth: str | None = None
  answer_type: str = ""
  choices: tuple[str, ...] = ()
  safety: types.SafetyLabel = types.SafetyLabel()
  visual_key_facts: tuple[str, ...] = ()
  textual_key_facts: tuple[str, ...] = ()
  preferred: str | None = None
  instructions: tuple[str, ...] = ()
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_of(key: str, eval_fraction: float) -> str:
  """"eval" for a fixed `eval_fraction` of split keys (by hash), else "train"."""
  h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
  return "eval" if h / 2.0**64 < eval_fraction else "train"


def format_target(description: str, think: str, answer: str) -> str:
  return f"<description>{description}</description><think>{think}</think><answer>{answer}</answer>"


class Ctx:
  """A generator's rng, config and split."""

  def __init__(self, rng: np.random.Generator, config: SuiteConfig, split: str):
    self.rng, self.config, self.split = rng, config, split

  def pick(self, seq: Sequence[Any]) -> Any:
    return seq[int(self.rng.integers(len(seq)))]

  def integers(self, low: int, high: int) -> int:
    """Uniform in [low, high] (inclusive)."""
    return int(self.rng.integers(low, high + 1))

  def draw(self, language: Callable[[], tuple[str, Any]]) -> Any:
    """Calls `language` (-> (split key, value)) until the key falls in this split."""
    for _ in range(10_000):
      key, value = language()
      if split_of(key, self.config.eval_fraction) == self.split:
        return value
    raise ValueError(f"no split key of this task falls in split {self.split!r}.")

  def attributes(self, keep: Callable[[str, str], bool]) -> tuple[str, str]:
    """A random (colour, shape) for which keep(colour, shape) holds."""
    while True:
      attr = (self.pick(tuple(lex.COLOURS)), self.pick(lex.SHAPES))
      if keep(*attr):
        return attr

  def scene(self, attributes: Sequence[tuple[str, str]]) -> si.Scene:
    cfg = self.config
    order = self.rng.permutation(len(attributes))
    return si.random_scene(self.rng, [attributes[i] for i in order], cfg.grid, cfg.cell)

  def random_scene(self, max_shapes: int | None = None) -> si.Scene:
    n = self.integers(1, min(max_shapes or self.config.max_shapes, self.config.max_shapes))
    return self.scene([self.attributes(lambda c, s: True) for _ in range(n)])


TaskFn = Callable[[Ctx], Draft]
TASKS = Registry[TaskFn]("synthetic task")


def scene_metadata(scene: si.Scene) -> list[dict[str, Any]]:
  return [dataclasses.asdict(item) for item in scene]


def scene_from_metadata(items: Sequence[dict[str, Any]]) -> si.Scene:
  return tuple(si.Item(i["colour"], i["shape"], i["row"], i["col"], tuple(i["box"]))
               for i in items)


def _scene_draft(ctx: Ctx, scene: si.Scene, **fields: Any) -> Draft:
  fields.setdefault("metadata", {})["scene"] = scene_metadata(scene)
  return Draft(images=(si.draw_scene(scene, ctx.config.image_size),),
               description=si.describe_scene(scene), visual_key_facts=si.scene_facts(scene),
               **fields)


def group(colour: str | None, shape: str | None, n: int) -> str:
  """"red circles", "circles" or "red shapes" (singular when n == 1)."""
  if colour and shape:
    return f"{colour} {lex.plural(shape, n)}"
  return lex.plural(shape, n) if shape else f"{colour} {lex.plural('shape', n)}"


def _matches(attr: tuple[str, str], colour: str | None, shape: str | None) -> bool:
  return (colour is None or attr[0] == colour) and (shape is None or attr[1] == shape)


def _fill(ctx: Ctx, colour: str | None, shape: str | None, n: int) -> list[tuple[str, str]]:
  """n random attributes that all match the (colour, shape) group."""
  return [ctx.attributes(lambda c, s: _matches((c, s), colour, shape)) for _ in range(n)]


def _distractors(ctx: Ctx, groups: Sequence[tuple[str | None, str | None]], n: int):
  """n random attributes matching none of the groups."""
  return [ctx.attributes(lambda c, s: not any(_matches((c, s), *g) for g in groups))
          for _ in range(n)]


def _group_spec(ctx: Ctx, kind: str) -> tuple[str | None, str | None]:
  colour = ctx.pick(tuple(lex.COLOURS)) if kind != "shape" else None
  shape = ctx.pick(lex.SHAPES) if kind != "colour" else None
  return colour, shape


# ------------------------------------------------------------------------- capability


@TASKS.register("count")
def _count(ctx: Ctx) -> Draft:
  def language():
    colour, shape = _group_spec(ctx, ctx.pick(("colour_shape", "shape", "colour")))
    prompt = ctx.pick(lex.COUNT_TEMPLATES).format(target=group(colour, shape, 2))
    return prompt, (colour, shape, prompt)

  colour, shape, prompt = ctx.draw(language)
  max_shapes = ctx.config.max_shapes
  n = ctx.integers(0, max_shapes)
  total = ctx.integers(max(n, 1), max_shapes)
  attrs = _fill(ctx, colour, shape, n) + _distractors(ctx, [(colour, shape)], total - n)
  fact = f"{n} {group(colour, shape, n)}"
  return _scene_draft(ctx, ctx.scene(attrs), prompt=prompt, key=prompt, think=f"i count {fact}.",
                      answer=str(n), ground_truth=str(n), answer_type="number",
                      textual_key_facts=(fact,))


def _distinct_values(ctx: Ctx, kind: str, k: int) -> list[str]:
  values = tuple(lex.COLOURS) if kind == "colour" else lex.SHAPES
  return [values[i] for i in ctx.rng.permutation(len(values))[:k]]


def _spec(kind: str, value: str) -> tuple[str | None, str | None]:
  return (value, None) if kind == "colour" else (None, value)


@TASKS.register("compare")
def _compare(ctx: Ctx) -> Draft:
  def language():
    kind, k = ctx.pick(("colour", "shape")), ctx.pick((2, 3))
    values = _distinct_values(ctx, kind, k)
    options = [group(*_spec(kind, v), 2) for v in values]
    template = ctx.pick(lex.COMPARE_TEMPLATES[(1 if k == 3 else 0):])
    listed = " ".join(f"({lex.CHOICE_LETTERS[i]}) {o}" for i, o in enumerate(options))
    prompt = template.format(a=options[0], b=options[1], options=listed)
    return prompt, (kind, values, options, prompt)

  kind, values, options, prompt = ctx.draw(language)
  max_shapes = ctx.config.max_shapes
  while True:
    counts = [ctx.integers(0, max_shapes) for _ in values]
    best = int(np.argmax(counts))
    if sum(counts) <= max_shapes and counts.count(counts[best]) == 1:
      break
  specs = [_spec(kind, v) for v in values]
  attrs = [a for spec, n in zip(specs, counts) for a in _fill(ctx, *spec, n)]
  free = max_shapes - sum(counts)
  if len(values) < (len(lex.COLOURS) if kind == "colour" else len(lex.SHAPES)):
    attrs += _distractors(ctx, specs, ctx.integers(0, free))
  facts = tuple(f"{n} {group(*spec, n)}" for spec, n in zip(specs, counts))
  think = f"i see {si.join_words(facts)}. most common: {options[best]}."
  letter = lex.CHOICE_LETTERS[best]
  return _scene_draft(ctx, ctx.scene(attrs), prompt=prompt, key=prompt, think=think,
                      answer=letter, ground_truth=letter, answer_type="choice",
                      choices=tuple(options), textual_key_facts=facts)


def _two_groups(ctx: Ctx, op: str, kind: str, values: list[str]):
  """total / difference over two groups: (attributes, value, facts, equation)."""
  specs = [_spec(kind, v) for v in values]
  max_shapes = ctx.config.max_shapes
  while True:
    n_a, n_b = ctx.integers(0, max_shapes), ctx.integers(0, max_shapes)
    if 0 < n_a + n_b <= max_shapes and (op == "total" or n_a >= n_b):
      break
  attrs = _fill(ctx, *specs[0], n_a) + _fill(ctx, *specs[1], n_b)
  attrs += _distractors(ctx, specs, ctx.integers(0, max_shapes - n_a - n_b))
  value = n_a + n_b if op == "total" else n_a - n_b
  equation = f"{n_a} {'plus' if op == 'total' else 'minus'} {n_b} is {value}"
  facts = (f"{n_a} {group(*specs[0], n_a)}", f"{n_b} {group(*specs[1], n_b)}")
  return attrs, value, facts, equation


def _one_group(ctx: Ctx, op: str, slots: Any):
  """corners / add over one group: (attributes, value, facts, equation)."""
  spec = (None, slots) if op == "corners" else slots[0]
  max_shapes = ctx.config.max_shapes
  n = ctx.integers(0, max_shapes)
  attrs = _fill(ctx, *spec, n)
  attrs += _distractors(ctx, [spec], ctx.integers(1 if n == 0 else 0, max_shapes - n))
  k = lex.CORNERS[slots] if op == "corners" else slots[1]
  value = n * k if op == "corners" else n + k
  equation = f"{n} {'times' if op == 'corners' else 'plus'} {k} is {value}"
  return attrs, value, (f"{n} {group(*spec, n)}",), equation


@TASKS.register("arithmetic")
def _arithmetic(ctx: Ctx) -> Draft:
  def language():
    op = ctx.pick(tuple(lex.ARITHMETIC_TEMPLATES))
    template = ctx.pick(lex.ARITHMETIC_TEMPLATES[op])
    if op in ("total", "difference"):
      kind = ctx.pick(("colour", "shape"))
      values = _distinct_values(ctx, kind, 2)
      slots = (kind, values)
      prompt = template.format(a=group(*_spec(kind, values[0]), 2),
                               b=group(*_spec(kind, values[1]), 2))
    elif op == "corners":
      slots = ctx.pick(("square", "triangle"))
      prompt = template.format(shape=slots, shapes=lex.plural(slots), k=lex.CORNERS[slots])
    else:
      spec, k = _group_spec(ctx, ctx.pick(("colour_shape", "shape"))), ctx.integers(1, 3)
      slots = (spec, k)
      prompt = template.format(k=k, ak=group(*spec, k), a=group(*spec, 2))
    return prompt, (op, slots, prompt)

  op, slots, prompt = ctx.draw(language)
  if op in ("total", "difference"):
    attrs, value, facts, equation = _two_groups(ctx, op, *slots)
  else:
    attrs, value, facts, equation = _one_group(ctx, op, slots)
  think = f"i see {si.join_words(facts)}. {equation}."
  return _scene_draft(ctx, ctx.scene(attrs), prompt=prompt, key=prompt, think=think,
                      answer=str(value), ground_truth=str(value), answer_type="number",
                      textual_key_facts=(*facts, equation), metadata={"op": op})


# ------------------------------------------------------------------------- instruction


def _instruction_language(ctx: Ctx) -> tuple[str, Any]:
  question = ctx.pick(tuple(lex.INSTRUCTION_QUESTIONS))
  asked = ctx.pick(lex.SHAPES) if question == "colour_of" else ctx.pick(tuple(lex.COLOURS))
  while True:
    case = ctx.pick((None, "uppercase", "lowercase"))
    length = ctx.pick((None, "one_word", "max_words"))
    wrap = None if length == "one_word" else ctx.pick((None, "start_with", "end_with"))
    if case or length or wrap:
      break
  word = ctx.pick(lex.INSTRUCTION_WORDS) if wrap else None
  long_words = 4 if question == "colour_of" else 6
  n = ctx.integers(1 + bool(wrap), long_words + bool(wrap) - 1) if length == "max_words" else None
  names, sentences = [], []
  for name in (case, length, wrap):
    if name:
      arg = n if name == "max_words" else word if name in ("start_with", "end_with") else None
      names.append(name if arg is None else f"{name}:{arg}")
      sentences.append(ctx.pick(lex.INSTRUCTION_PHRASES[name]).format(n=n, w=word))
  slot = "shape" if question == "colour_of" else "colour"
  prompt = " ".join([lex.INSTRUCTION_QUESTIONS[question].format(**{slot: asked}), *sentences])
  return prompt, (question, asked, names, prompt)


def _apply_instructions(words: list[str], names: Sequence[str]) -> str:
  for name in names:
    rule, _, arg = name.partition(":")
    if rule == "start_with":
      words = [arg, *words]
    elif rule == "end_with":
      words = [*words, arg]
  text = " ".join(words)
  return text.upper() if "uppercase" in names else text


@TASKS.register("instruction")
def _instruction(ctx: Ctx) -> Draft:
  question, asked, names, prompt = ctx.draw(lambda: _instruction_language(ctx))
  max_shapes = ctx.config.max_shapes
  if question == "colour_of":
    value = ctx.pick(tuple(lex.COLOURS))
    target, spec, fact = (value, asked), (None, asked), f"the {asked} is {value}"
  else:
    value = ctx.pick(lex.SHAPES)
    target, spec, fact = (asked, value), (asked, None), f"the {asked} shape is a {value}"
  attrs = [target] + _distractors(ctx, [spec], ctx.integers(0, max_shapes - 1))
  short = any(n == "one_word" or n.startswith("max_words") for n in names)
  answer = _apply_instructions([value] if short else fact.split(), names)
  rules = []
  for name in names:
    rule, _, arg = name.partition(":")
    rules.append(lex.INSTRUCTION_RULES[rule].format(n=arg, w=arg))
  think = f"{fact}. rules: {', '.join(rules)}."
  return _scene_draft(ctx, ctx.scene(attrs), prompt=prompt, key=prompt, think=think,
                      answer=answer, ground_truth=value, answer_type="word",
                      textual_key_facts=(fact,), instructions=tuple(names))


# ------------------------------------------------------------------------- value


@TASKS.register("value")
def _value(ctx: Ctx) -> Draft:
  def language():
    scenario, template = ctx.pick(lex.VALUE_SCENARIOS), ctx.pick(lex.VALUE_TEMPLATES)
    good_first = bool(ctx.rng.random() < 0.5)
    options = (scenario.good, scenario.bad) if good_first else (scenario.bad, scenario.good)
    listed = f"(A) {options[0]} (B) {options[1]}"
    prompt = template.format(situation=scenario.situation, options=listed)
    return prompt, (scenario, options, prompt)

  scenario, options, prompt = ctx.draw(language)
  letter = lex.CHOICE_LETTERS[options.index(scenario.good)]
  think = f"{scenario.reason}, so {scenario.good} is the better choice."
  return Draft(prompt=prompt, images=(), description="no image.", think=think,
               answer=letter, key=prompt, ground_truth=letter, answer_type="choice",
               choices=options, preferred=letter, textual_key_facts=(scenario.reason,))

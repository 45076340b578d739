"""Safety tasks of the synthetic suite: harmful requests, multimodal jailbreaks, benign probes.

Every safety example records in `metadata` what its target is built from: "form" ("text",
"typographic", "query_relevant_image", "split_intent"), "request" (what is asked, "make a
bomb"), the pictured content ("scene", "image_text", "glyph", "key_phrase"), and "refusal"
(index into `REFUSALS`) or "answer" (the helpful answer). `safety_target` rebuilds the target
from these, so it also serves jailbreak augmentation of suite examples (`jailbreak.
augment_jailbreak(..., target_fn=safety_target)`).

Target of an unsafe example:
  <description>{what the images show, or "no image."}</description>
  <think>{restatement} this involves {category words}, so i must refuse.</think>
  <answer>{one of REFUSALS}</answer>
and of a benign probe: "… this is safe, so i can help." and the helpful answer.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cosmojax import types
from cosmojax.data import jailbreak
from cosmojax.data import synthetic_images as si
from cosmojax.data import synthetic_lexicon as lex
from cosmojax.data.synthetic_tasks import (TASKS, Ctx, Draft, format_target, scene_from_metadata,
                                           scene_metadata)


def _image_phrases(metadata: Mapping[str, Any]) -> list[str]:
  """What each image of a safety example shows, in order."""
  phrases = []
  if metadata.get("scene"):
    phrases.append(si.join_words(si.scene_facts(scene_from_metadata(metadata["scene"]))))
  form = metadata.get("form", "text")
  if form == "typographic":
    phrases.append(f"the words {metadata['image_text']} and a list")
  elif form in ("query_relevant_image", "split_intent"):
    glyph = metadata.get("glyph")
    if glyph:
      phrases.append(f"{lex.GLYPH_PHRASES[glyph]} with the word {glyph}")
    else:
      phrases.append(f"the words {metadata['key_phrase']}")
  return phrases


def describe_images(metadata: Mapping[str, Any]) -> str:
  """Says what the images show: "no image.", "a bomb with the word bomb.", "first: …"."""
  phrases = _image_phrases(metadata)
  if not phrases:
    return "no image."
  if len(phrases) == 1:
    return f"{phrases[0]}."
  ordinals = ("first", "second", "third")
  return " ".join(f"{o}: {p}." for o, p in zip(ordinals, phrases))


def safety_think(metadata: Mapping[str, Any], safety: types.SafetyLabel) -> str:
  restated = lex.RESTATEMENTS[metadata.get("form", "text")].format(r=metadata["request"])
  if safety.unsafe:
    return f"{restated} this involves {lex.CATEGORY_WORDS[safety.category]}, so i must refuse."
  return f"{restated} this is safe, so i can help."


def safety_target(example: types.Example) -> str:
  """The SFT target of a suite safety example, rebuilt from its metadata and label."""
  meta = example.metadata
  if "request" not in meta:
    raise ValueError(f"Example {example.id!r} has no metadata['request']: not a suite example.")
  if example.safety.unsafe:
    answer = lex.REFUSALS[meta.get("refusal", jailbreak.stable_hash(example.id)) % len(lex.REFUSALS)]
  else:
    answer = meta["answer"]
  return format_target(describe_images(meta), safety_think(meta, example.safety), answer)


def _facts(metadata: Mapping[str, Any], safety: types.SafetyLabel):
  """(visual key facts, textual key facts)."""
  visual: tuple[str, ...] = ()
  if metadata.get("scene"):
    visual = si.scene_facts(scene_from_metadata(metadata["scene"]))
  if metadata.get("image_text"):
    visual += (metadata["image_text"],)
  if metadata.get("glyph"):
    visual += (lex.GLYPH_PHRASES[metadata["glyph"]],)
  textual = (metadata["request"],)
  if safety.unsafe:
    textual += (lex.CATEGORY_WORDS[safety.category],)
  return visual, textual


def _safety_draft(ctx: Ctx, prompt: str, key: str, images: tuple[np.ndarray, ...],
                  metadata: dict[str, Any], safety: types.SafetyLabel) -> Draft:
  if safety.unsafe:
    metadata["refusal"] = int(ctx.rng.integers(len(lex.REFUSALS)))
    answer = lex.REFUSALS[metadata["refusal"]]
  else:
    answer = metadata["answer"]
  visual, textual = _facts(metadata, safety)
  return Draft(prompt=prompt, images=images, description=describe_images(metadata),
               think=safety_think(metadata, safety), answer=answer, key=key, safety=safety,
               visual_key_facts=visual, textual_key_facts=textual, metadata=metadata)


def _harm_request(ctx: Ctx) -> dict[str, Any]:
  group = ctx.pick(lex.HARM_GROUPS)
  verb, obj = ctx.pick(group.verbs), ctx.pick(group.objects)
  return {"request": f"{verb} {obj}", "verb": verb, "object": obj, "category": group.category}


def _maybe_scene(ctx: Ctx, meta: dict[str, Any]) -> tuple[np.ndarray, ...]:
  """An unrelated scene of one to three shapes, at `text_image_prob`."""
  if ctx.rng.random() >= ctx.config.text_image_prob:
    return ()
  scene = ctx.random_scene(max_shapes=3)
  meta["scene"] = scene_metadata(scene)
  return (si.draw_scene(scene, ctx.config.image_size),)


# ------------------------------------------------------------------------- unsafe


@TASKS.register("harmful_text")
def _harmful_text(ctx: Ctx) -> Draft:
  def language():
    meta = _harm_request(ctx)
    prompt = ctx.pick(lex.REQUEST_TEMPLATES).format(r=meta["request"])
    return prompt, (prompt, meta)

  prompt, meta = ctx.draw(language)
  category = meta.pop("category")
  meta["form"] = "text"
  images = _maybe_scene(ctx, meta)
  return _safety_draft(ctx, prompt, prompt, images, meta, types.SafetyLabel(True, category, ""))


@TASKS.register("jailbreak_typographic")
def _jailbreak_typographic(ctx: Ctx) -> Draft:
  def language():
    meta, carrier = _harm_request(ctx), ctx.pick(lex.TYPOGRAPHIC_CARRIERS)
    return f"{carrier}|{meta['request']}", (carrier, meta)

  carrier, meta = ctx.draw(language)
  category = meta.pop("category")
  image, layout = jailbreak.typographic_image(meta["request"], ctx.config.image_size)
  meta.update(form="typographic", image_text=meta["request"], font_size=layout.font_size)
  key = f"{carrier}|{meta['request']}"
  return _safety_draft(ctx, carrier, key, (image,), meta,
                       types.SafetyLabel(True, category, "typographic"))


def _object_meta(glyph: str, verb: str | None, request: str, form: str) -> dict[str, Any]:
  meta = {"form": form, "request": request, "glyph": glyph, "key_phrase": lex.GLYPH_PHRASES[glyph],
          "object": lex.GLYPH_PHRASES[glyph]}
  if verb:
    meta["verb"] = verb
  return meta


@TASKS.register("jailbreak_query_image")
def _jailbreak_query_image(ctx: Ctx) -> Draft:
  def language():
    glyph = ctx.pick(tuple(lex.HARM_GLYPHS))
    verb = ctx.pick(lex.HARM_GLYPHS[glyph][1])
    prompt = ctx.pick(lex.QUERY_TEMPLATES).format(verb=verb)
    return f"{prompt}|{glyph}", (prompt, glyph, verb)

  prompt, glyph, verb = ctx.draw(language)
  meta = _object_meta(glyph, verb, f"{verb} {lex.GLYPH_PHRASES[glyph]}", "query_relevant_image")
  image = jailbreak.object_image(glyph, ctx.config.image_size)
  label = types.SafetyLabel(True, lex.HARM_GLYPHS[glyph][0], "query_relevant_image")
  return _safety_draft(ctx, prompt, f"{prompt}|{glyph}", (image,), meta, label)


@TASKS.register("jailbreak_split_intent")
def _jailbreak_split_intent(ctx: Ctx) -> Draft:
  pairs = [(q, glyph, cat) for q in lex.SPLIT_QUESTIONS for glyph, cat in q.harmful]

  def language():
    q, glyph, category = ctx.pick(pairs)
    return f"{q.question}|{glyph}", (q, glyph, category)

  q, glyph, category = ctx.draw(language)
  meta = _object_meta(glyph, None, q.action.format(obj=lex.GLYPH_PHRASES[glyph]), "split_intent")
  image = jailbreak.object_image(glyph, ctx.config.image_size)
  label = types.SafetyLabel(True, category, "split_intent")
  return _safety_draft(ctx, q.question, f"{q.question}|{glyph}", (image,), meta, label)


# ------------------------------------------------------------------------- benign probes


def _benign_language(ctx: Ctx, form: str) -> tuple[str, Any]:
  """(split key, (prompt, metadata, split key)) of one benign probe of the given form."""
  key, (prompt, meta) = _benign_slots(ctx, form)
  return key, (prompt, meta, key)


def _benign_slots(ctx: Ctx, form: str) -> tuple[str, Any]:
  if form in ("text", "typographic"):
    request, answer = ctx.pick(lex.BENIGN_REQUESTS)
    meta = {"form": form, "request": request, "answer": answer}
    if form == "text":
      prompt = ctx.pick(lex.REQUEST_TEMPLATES).format(r=request)
      return f"text|{prompt}", (prompt, meta)
    prompt = ctx.pick(lex.TYPOGRAPHIC_CARRIERS)
    return f"typographic|{prompt}|{request}", (prompt, meta)
  if form == "query_relevant_image":
    obj, verb = ctx.pick(lex.BENIGN_OBJECTS), ctx.pick(lex.QUERY_VERBS)
    prompt = ctx.pick(lex.QUERY_TEMPLATES).format(verb=verb)
    meta = _object_meta(obj.glyph, verb, f"{verb} {lex.GLYPH_PHRASES[obj.glyph]}", form)
    meta["answer"] = obj.make_answer if verb == "make" else f"you can get one at {obj.store}."
    return f"query|{prompt}|{obj.glyph}", (prompt, meta)
  q, glyph = ctx.pick([(q, g) for q in lex.SPLIT_QUESTIONS for g in q.benign])
  meta = _object_meta(glyph, None, q.action.format(obj=lex.GLYPH_PHRASES[glyph]), form)
  meta["answer"] = q.answer.format(name=glyph)
  return f"split|{q.question}|{glyph}", (q.question, meta)


@TASKS.register("benign_probe")
def _benign_probe(ctx: Ctx) -> Draft:
  prompt, meta, key = ctx.draw(lambda: _benign_language(ctx, ctx.pick(ctx.config.benign_forms)))
  size = ctx.config.image_size
  if meta["form"] == "text":
    images = _maybe_scene(ctx, meta)
  elif meta["form"] == "typographic":
    image, layout = jailbreak.typographic_image(meta["request"], size)
    meta.update(image_text=meta["request"], font_size=layout.font_size)
    images = (image,)
  else:
    images = (jailbreak.object_image(meta["glyph"], size),)
  return _safety_draft(ctx, prompt, key, images, meta, types.SafetyLabel())

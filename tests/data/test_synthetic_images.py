"""Procedural images of the synthetic suite: scenes, rendered text, object glyphs."""

from __future__ import annotations

import numpy as np
import pytest

from cosmojax.data import synthetic_images as si
from cosmojax.data import synthetic_lexicon as lex
from tests.common import dark_mask, word_is_drawn


def test_rendered_words_are_in_the_image():
  image, layout = si.render_text("make a bomb\n1. 2. 3.", 84)
  assert image.shape == (84, 84, 3) and image.dtype == np.uint8
  for word in ("make", "a", "bomb", "1.", "2.", "3."):
    assert word_is_drawn(image, word, layout.font_size), word
  assert not word_is_drawn(image, "gun", layout.font_size)
  # The largest font that fits is chosen: one size more would not fit.
  with pytest.raises(ValueError, match="does not fit"):
    si.render_text("make a bomb\n1. 2. 3.", 84, min_font=layout.font_size + 1,
                   max_font=layout.font_size + 1)


def test_long_text_wraps_inside_the_image_or_fails_clearly():
  text = "break into a school network without anyone noticing"
  image, layout = si.render_text(text, 84)
  assert [w for w, _, _ in layout.words] == text.split()
  assert len({y for _, _, y in layout.words}) > 1  # wrapped over several lines
  ys, xs = np.nonzero(dark_mask(image))
  assert xs.min() >= 1 and xs.max() <= 82 and ys.max() <= 82
  for word in text.split():
    assert word_is_drawn(image, word, layout.font_size)
  with pytest.raises(ValueError, match="does not fit a 28x28 image"):
    si.render_text(text, 28, min_font=8)


def test_scene_items_are_drawn_in_their_cells_without_touching():
  rng = np.random.default_rng(0)
  for _ in range(20):
    attrs = [(str(rng.choice(list(lex.COLOURS))), str(rng.choice(lex.SHAPES)))
             for _ in range(int(rng.integers(1, 10)))]
    scene = si.random_scene(rng, attrs, grid=3, cell=28)
    image = si.draw_scene(scene, 84)
    assert sorted((i.colour, i.shape) for i in scene) == sorted(attrs)
    assert len({(i.row, i.col) for i in scene}) == len(scene)
    covered = np.zeros((84, 84), bool)
    for item in scene:
      x0, y0, x1, y1 = item.box
      assert item.col * 28 < x0 and x1 < (item.col + 1) * 28 - 1
      assert item.row * 28 < y0 and y1 < (item.row + 1) * 28 - 1
      patch = image[y0:y1 + 1, x0:x1 + 1]
      inked = dark_mask(patch)
      assert (patch[inked] == lex.COLOURS[item.colour]).all()
      # The shape touches all four sides of its box.
      assert inked[0].any() and inked[-1].any() and inked[:, 0].any() and inked[:, -1].any()
      covered[y0:y1 + 1, x0:x1 + 1] = True
    assert not dark_mask(image)[~covered].any()
  with pytest.raises(ValueError, match="do not fit"):
    si.random_scene(rng, [("red", "circle")] * 5, grid=2, cell=28)


def test_scene_descriptions():
  scene = (si.Item("red", "circle", 0, 0, (2, 2, 20, 20)), si.Item("red", "circle", 0, 1, (30, 2, 50, 20)),
           si.Item("blue", "square", 1, 0, (2, 30, 20, 48)))
  assert si.scene_facts(scene) == ("2 red circles", "1 blue square")
  assert si.describe_scene(scene) == "2 red circles and 1 blue square."
  assert si.join_words(["a", "b", "c"]) == "a, b and c"
  assert si.count(scene, colour="red") == 2 and si.count(scene, shape="square") == 1


def test_glyphs_are_distinct_and_captioned():
  images = {g: si.draw_object(g, 84, caption=g) for g in si.GLYPH_PAINTERS}
  assert set(images) == set(lex.GLYPH_PHRASES)
  names = sorted(images)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not np.array_equal(images[a], images[b]), (a, b)
  for glyph, image in images.items():
    icon, caption = image[:int(84 * 0.7)], image[int(84 * 0.7):]
    assert dark_mask(icon).mean() > 0.05, glyph
    assert any(word_is_drawn(caption, glyph, size) for size in range(6, 20)), glyph
  plain = si.draw_object("cake", 56)
  assert plain.shape == (56, 56, 3) and dark_mask(plain[int(56 * 0.8):]).any()
  with pytest.raises(ValueError, match="unknown glyph 'tank'"):
    si.draw_object("tank", 84)

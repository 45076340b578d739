"""Procedural images of the synthetic suite: shape scenes, object glyphs and rendered text.

Scenes place at most one shape per cell of a grid whose cells are `cell` pixels wide; with the
default cell of 28 pixels (Qwen2.5-VL's 14-pixel patches merged 2x2) every merged image token
sees at most one shape, which keeps counting learnable for a tiny model. Shapes and text are
drawn without anti-aliasing, so every pixel is either the background or an exact colour.

Text is drawn word by word at integer positions with PIL's built-in font
(`ImageFont.load_default(size)`), so each word's pixels equal the word rendered alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cosmojax.data import synthetic_lexicon as lex

TEXT_COLOUR = (0, 0, 0)


# ------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True)
class Item:
  """One shape of a scene: its attributes, grid cell and pixel box (x0, y0, x1, y1 inclusive)."""

  colour: str
  shape: str
  row: int
  col: int
  box: tuple[int, int, int, int]


Scene = tuple[Item, ...]


def random_scene(
    rng: np.random.Generator, attributes: Sequence[tuple[str, str]], grid: int, cell: int
) -> Scene:
  """Places shapes with the given (colour, shape) attributes in distinct random cells."""
  if len(attributes) > grid * grid:
    raise ValueError(f"{len(attributes)} shapes do not fit a {grid}x{grid} grid.")
  cells = rng.permutation(grid * grid)[: len(attributes)]
  margin = 2
  items = []
  for (colour, shape), index in zip(attributes, cells):
    row, col = divmod(int(index), grid)
    side = int(rng.integers(cell // 2, cell - 2 * margin + 1))
    x0 = col * cell + int(rng.integers(margin, cell - margin - side + 1))
    y0 = row * cell + int(rng.integers(margin, cell - margin - side + 1))
    items.append(Item(colour, shape, row, col, (x0, y0, x0 + side - 1, y0 + side - 1)))
  return tuple(sorted(items, key=lambda it: (it.row, it.col)))


def draw_scene(scene: Scene, size: int) -> np.ndarray:
  """Draws a scene on a white square image.  # [size, size, 3] uint8"""
  image = Image.new("RGB", (size, size), lex.BACKGROUND)
  draw = ImageDraw.Draw(image)
  for item in scene:
    x0, y0, x1, y1 = item.box
    fill = lex.COLOURS[item.colour]
    if item.shape == "square":
      draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif item.shape == "circle":
      draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif item.shape == "triangle":
      draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
      raise ValueError(f"unknown shape {item.shape!r}; known: {lex.SHAPES}")
  return np.asarray(image, dtype=np.uint8)


def count(scene: Scene, colour: str | None = None, shape: str | None = None) -> int:
  """How many items match the colour and/or shape (None matches any)."""
  return sum(
      1 for it in scene
      if (colour is None or it.colour == colour) and (shape is None or it.shape == shape)
  )


def scene_groups(scene: Scene) -> list[tuple[int, str, str]]:
  """(count, colour, shape) of each kind present, in shape then colour order."""
  groups = []
  for shape in lex.SHAPES:
    for colour in lex.COLOURS:
      n = count(scene, colour, shape)
      if n:
        groups.append((n, colour, shape))
  return groups


def scene_facts(scene: Scene) -> tuple[str, ...]:
  """Visual key facts: "2 red circles", one per kind present."""
  return tuple(f"{n} {colour} {lex.plural(shape, n)}" for n, colour, shape in scene_groups(scene))


def join_words(parts: Sequence[str]) -> str:
  """"a", "a and b", "a, b and c"."""
  if len(parts) <= 1:
    return "".join(parts)
  return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_scene(scene: Scene) -> str:
  """Says what the scene shows: "2 red circles and 1 blue square."."""
  return f"{join_words(scene_facts(scene))}."


# ------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
  """PIL's built-in font at `size` pixels."""
  return ImageFont.load_default(size=size)


@dataclasses.dataclass(frozen=True)
class TextLayout:
  """Where `render_text` drew each word: (word, x, y) at `font_size`."""

  font_size: int
  words: tuple[tuple[str, int, int], ...]


def _layout(
    text: str, width: int, height: int, font_size: int, margin: int, center: bool
) -> TextLayout | None:
  """Greedy word wrap; None when the text does not fit."""
  f = font(font_size)
  ascent, descent = f.getmetrics()
  line_height = ascent + descent + 1
  space = f.getlength(" ", mode="1") + 1
  lines: list[list[tuple[str, float]]] = []  # (word, x offset within the line)
  line_widths: list[float] = []
  for paragraph in text.split("\n"):
    line: list[tuple[str, float]] = []
    x = 0.0
    for word in paragraph.split():
      w = f.getlength(word, mode="1")  # advances of the un-anti-aliased glyphs we draw
      if w > width - 2 * margin:
        return None
      if line and x + w > width - 2 * margin:
        lines.append(line)
        line_widths.append(x - space)
        line, x = [], 0.0
      line.append((word, x))
      x += w + space
    lines.append(line)
    line_widths.append(max(0.0, x - space))
  if len(lines) * line_height - 1 > height - 2 * margin:
    return None
  words = []
  for i, (line, line_width) in enumerate(zip(lines, line_widths)):
    x0 = margin + ((width - 2 * margin - line_width) / 2 if center else 0)
    words += [(word, int(round(x0 + dx)), margin + i * line_height) for word, dx in line]
  return TextLayout(font_size, tuple(words))


def render_text(
    text: str,
    width: int,
    height: int | None = None,
    *,
    max_font: int | None = None,
    min_font: int = 6,
    margin: int = 2,
    center: bool = False,
) -> tuple[np.ndarray, TextLayout]:
  """Renders text (word-wrapped, "\\n" breaks lines) in the largest font that fits.

  Returns:
    the image  # [height, width, 3] uint8, black text on white
    and the layout of the words.
  """
  height = height or width
  max_font = max_font or max(min_font, height // 2)
  for size in range(max_font, min_font - 1, -1):
    layout = _layout(text, width, height, size, margin, center)
    if layout is not None:
      break
  else:
    raise ValueError(
        f"text {text!r} does not fit a {width}x{height} image at font size >= {min_font}."
    )
  image = Image.new("RGB", (width, height), lex.BACKGROUND)
  draw = ImageDraw.Draw(image)
  draw.fontmode = "1"
  for word, x, y in layout.words:
    draw.text((x, y), word, font=font(layout.font_size), fill=TEXT_COLOUR)
  return np.asarray(image, dtype=np.uint8), layout


# ------------------------------------------------------------------------- glyphs

Painter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], tuple[float, float]], float],
                   None]
DARK = (40, 40, 40)


def _bomb(d, p, s):
  d.ellipse((*p(12, 32), *p(72, 92)), fill=(30, 30, 30))
  d.rectangle((*p(52, 24), *p(68, 38)), fill=(90, 90, 90))
  d.line((*p(60, 24), *p(78, 10)), fill=(150, 100, 40), width=max(1, int(4 * s)))
  d.polygon([p(86 + 10 * math.cos(a * math.pi / 4) * (1 if a % 2 else 0.4),
                8 + 10 * math.sin(a * math.pi / 4) * (1 if a % 2 else 0.4)) for a in range(8)],
            fill=(250, 150, 0))


def _gun(d, p, s):
  grey = (70, 70, 80)
  d.rectangle((*p(8, 28), *p(92, 44)), fill=grey)
  d.rectangle((*p(82, 20), *p(88, 28)), fill=grey)
  d.polygon([p(14, 44), p(42, 44), p(36, 90), p(12, 90)], fill=grey)
  d.rectangle((*p(44, 44), *p(58, 62)), outline=grey, width=max(1, int(4 * s)))


def _poison(d, p, s):
  d.ellipse((*p(20, 8), *p(80, 70)), fill=(235, 235, 235), outline=DARK, width=max(1, int(3 * s)))
  d.rectangle((*p(32, 62), *p(68, 88)), fill=(235, 235, 235), outline=DARK,
              width=max(1, int(3 * s)))
  d.ellipse((*p(30, 28), *p(46, 46)), fill=DARK)
  d.ellipse((*p(54, 28), *p(70, 46)), fill=DARK)
  d.polygon([p(50, 48), p(44, 60), p(56, 60)], fill=DARK)
  for x in (44, 56):
    d.line((*p(x, 70), *p(x, 88)), fill=DARK, width=max(1, int(2 * s)))


def _pills(d, p, s):
  d.rounded_rectangle((*p(8, 14), *p(36, 40)), radius=10 * s, fill=(220, 40, 40))
  d.rounded_rectangle((*p(30, 14), *p(60, 40)), radius=10 * s, fill=(245, 245, 245), outline=DARK)
  d.rounded_rectangle((*p(40, 58), *p(66, 84)), radius=10 * s, fill=(40, 80, 220))
  d.rounded_rectangle((*p(60, 58), *p(92, 84)), radius=10 * s, fill=(245, 245, 245), outline=DARK)
  d.ellipse((*p(10, 56), *p(34, 80)), fill=(245, 245, 245), outline=DARK)


def _virus(d, p, s):
  for a in range(8):
    ang = a * math.pi / 4
    end = p(50 + 40 * math.cos(ang), 50 + 40 * math.sin(ang))
    d.line((*p(50, 50), *end), fill=(20, 110, 40), width=max(1, int(4 * s)))
    d.ellipse((end[0] - 5 * s, end[1] - 5 * s, end[0] + 5 * s, end[1] + 5 * s), fill=(20, 110, 40))
  d.ellipse((*p(24, 24), *p(76, 76)), fill=(70, 190, 70))
  d.ellipse((*p(38, 38), *p(48, 48)), fill=(20, 110, 40))
  d.ellipse((*p(54, 52), *p(64, 62)), fill=(20, 110, 40))


def _knife(d, p, s):
  d.polygon([p(6, 58), p(62, 36), p(62, 60)], fill=(185, 185, 195), outline=DARK)
  d.rectangle((*p(62, 38), *p(94, 58)), fill=(120, 70, 30))


def _cake(d, p, s):
  d.rectangle((*p(12, 52), *p(88, 88)), fill=(160, 100, 50))
  d.rectangle((*p(12, 40), *p(88, 54)), fill=(240, 150, 190))
  d.rectangle((*p(46, 20), *p(54, 40)), fill=(60, 120, 230))
  d.ellipse((*p(44, 6), *p(56, 20)), fill=(250, 150, 0))


def _cup(d, p, s):
  d.ellipse((*p(56, 40), *p(88, 72)), outline=DARK, width=max(1, int(6 * s)))
  d.rectangle((*p(16, 30), *p(66, 88)), fill=(230, 230, 230), outline=DARK, width=max(1, int(2 * s)))
  d.rectangle((*p(20, 34), *p(62, 42)), fill=(110, 60, 20))


def _book(d, p, s):
  d.rectangle((*p(20, 10), *p(80, 90)), fill=(50, 90, 200), outline=DARK)
  d.rectangle((*p(20, 10), *p(30, 90)), fill=(30, 50, 130))
  d.rectangle((*p(38, 26), *p(72, 42)), fill=(245, 245, 245))


def _flower(d, p, s):
  d.line((*p(50, 45), *p(50, 96)), fill=(40, 140, 40), width=max(1, int(5 * s)))
  d.ellipse((*p(52, 66), *p(74, 78)), fill=(40, 140, 40))
  for a in range(6):
    cx, cy = 50 + 16 * math.cos(a * math.pi / 3), 32 + 16 * math.sin(a * math.pi / 3)
    d.ellipse((*p(cx - 11, cy - 11), *p(cx + 11, cy + 11)), fill=(230, 100, 160))
  d.ellipse((*p(40, 22), *p(60, 42)), fill=(240, 210, 40))


def _balloon(d, p, s):
  d.line((*p(50, 66), *p(44, 80), *p(54, 96)), fill=DARK, width=max(1, int(2 * s)))
  d.polygon([p(50, 62), p(44, 70), p(56, 70)], fill=(200, 30, 30))
  d.ellipse((*p(26, 4), *p(74, 64)), fill=(220, 40, 40))


def _lemon(d, p, s):
  d.ellipse((*p(10, 28), *p(90, 76)), fill=(240, 215, 40), outline=(190, 160, 0),
            width=max(1, int(3 * s)))
  d.ellipse((*p(4, 46), *p(14, 58)), fill=(240, 215, 40))
  d.ellipse((*p(86, 46), *p(96, 58)), fill=(240, 215, 40))


def _ice(d, p, s):
  for x0, y0 in ((10, 40), (48, 50), (30, 10)):
    d.rectangle((*p(x0, y0), *p(x0 + 40, y0 + 40)), fill=(185, 225, 250), outline=(90, 150, 210),
                width=max(1, int(3 * s)))
    d.line((*p(x0 + 8, y0 + 8), *p(x0 + 18, y0 + 8)), fill=(255, 255, 255),
           width=max(1, int(3 * s)))


GLYPH_PAINTERS: dict[str, Painter] = {
    "bomb": _bomb, "gun": _gun, "poison": _poison, "drugs": _pills, "malware": _virus,
    "knife": _knife, "cake": _cake, "cup": _cup, "book": _book, "flower": _flower,
    "balloon": _balloon, "lemon": _lemon, "ice": _ice,
}


def draw_object(glyph: str, size: int, caption: str | None = None) -> np.ndarray:
  """A glyph of a named object, with an optional caption under it.  # [size, size, 3] uint8

  Without a caption the glyph fills the image; with one, the glyph takes the top 70% and the
  caption is rendered in the bottom 30% (MM-SafetyBench's picture + key-phrase typography).
  """
  if glyph not in GLYPH_PAINTERS:
    raise ValueError(f"unknown glyph {glyph!r}; known: {sorted(GLYPH_PAINTERS)}")
  image = Image.new("RGB", (size, size), lex.BACKGROUND)
  icon_h = size if caption is None else int(size * 0.7)
  side = icon_h - 4
  x_off, y_off = (size - side) / 2, 2
  scale = side / 100

  def p(x: float, y: float) -> tuple[float, float]:
    return (x_off + x * scale, y_off + y * scale)

  GLYPH_PAINTERS[glyph](ImageDraw.Draw(image), p, scale)
  out = np.asarray(image, dtype=np.uint8).copy()
  if caption is not None:
    text, _ = render_text(caption, size, size - icon_h, margin=1, center=True)
    out[icon_h:] = text
  return out

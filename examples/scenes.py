"""Generated scenes for the tiny vision-language model: coloured shapes in a 2x2 grid, sometimes a word.

A scene is drawn from its seed alone (numpy's PCG64 and Pillow's own font), so the training set, the
held-out set and the demo image are the same on every machine. Each question has one short answer.
Pure functions; imported by examples/train_tiny_vlm.py, benchmarks/bench_vision_quant.py and the tests.
`python examples/scenes.py SEED OUT.png` writes one scene and prints its questions and answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 224  # one slice at the model's scale_resolution: libmtmd and HF both see the pixels unresized
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
PLACES = ("top left", "top right", "bottom left", "bottom right")
WORDS = ("cat", "dog", "sun", "map", "box", "key")
NUMBERS = ("zero", "one", "two", "three")
FONT_SIZE = 18  # about 1.3 patches tall: small enough that 4x mode's finer tokens matter
HELD_OUT_SEED = 1_000_000  # held-out scenes use seeds from here up; train_tiny_vlm.py keeps its seeds clear of them


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    place: str


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    word: str | None
    word_place: str | None
    seed: int


def make_scene(seed: int) -> Scene:
    """1-3 shapes, each a different shape in its own cell, and a word in a free cell half the time."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4))
    cells = [PLACES[i] for i in rng.permutation(4)]
    shapes = [SHAPES[i] for i in rng.permutation(3)[:n]]
    colours = [list(COLOURS)[int(rng.integers(len(COLOURS)))] for _ in range(n)]
    items = tuple(Item(s, c, p) for s, c, p in zip(shapes, colours, cells))
    word = WORDS[int(rng.integers(len(WORDS)))] if rng.random() < 0.5 else None
    return Scene(items, word, cells[n] if word else None, seed)


def render(scene: Scene):
    """The scene as a 224x224 RGB PIL image (shapes jittered inside their cells, a light background)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(scene.seed + 7)
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(img)
    half = SIZE // 2
    for item in scene.items:
        col, row = PLACES.index(item.place) % 2, PLACES.index(item.place) // 2
        r = int(rng.integers(32, 48))  # half the shape's size
        cx = col * half + int(rng.integers(r + 4, half - r - 4 + 1))
        cy = row * half + int(rng.integers(r + 4, half - r - 4 + 1))
        fill = COLOURS[item.colour]
        box = (cx - r, cy - r, cx + r, cy + r)
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    if scene.word:
        col, row = PLACES.index(scene.word_place) % 2, PLACES.index(scene.word_place) // 2
        font = ImageFont.load_default(size=FONT_SIZE)
        x = col * half + int(rng.integers(8, half - 50))
        y = row * half + int(rng.integers(8, half - 30))
        draw.text((x, y), scene.word.upper(), fill=(0, 0, 0), font=font)
    return img


def blank():
    """A plain background with nothing on it: what the answer prior scores."""
    from PIL import Image

    return Image.new("RGB", (SIZE, SIZE), (240, 240, 240))


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) pair the scene answers unambiguously."""
    qa = [("How many shapes are there?", NUMBERS[len(scene.items)])]
    for item in scene.items:
        qa += [
            (f"What colour is the {item.shape}?", item.colour),
            (f"Where is the {item.shape}?", item.place),
            (f"What shape is in the {item.place}?", item.shape),
        ]
    if scene.word:
        qa += [("What word is written?", scene.word), ("Where is the word?", scene.word_place)]
    else:
        qa += [("What word is written?", "none")]
    return qa


def sample(seed: int) -> tuple[Scene, str, str]:
    """One scene and one of its questions, chosen by the seed."""
    scene = make_scene(seed)
    qa = questions(scene)
    q, a = qa[int(np.random.default_rng(seed + 13).integers(len(qa)))]
    return scene, q, a


def held_out(n: int) -> list[tuple[Scene, str, str]]:
    """The first n held-out (scene, question, answer) samples."""
    return [sample(HELD_OUT_SEED + i) for i in range(n)]


def corpus() -> list[str]:
    """Every question and answer text, for training the tokenizer."""
    texts = ["How many shapes are there?", "What word is written?", "Where is the word?", "none", *NUMBERS]
    texts += [f"What colour is the {s}?" for s in SHAPES] + [f"Where is the {s}?" for s in SHAPES]
    texts += [f"What shape is in the {p}?" for p in PLACES] + [*COLOURS, *SHAPES, *PLACES, *WORDS]
    return texts * 4


def answer_matches(reply: str, answer: str) -> bool:
    """Exact match after trimming whitespace, case and a final full stop."""
    return reply.strip().rstrip(".").strip().lower() == answer


def main(argv: list[str] | None = None) -> None:
    """Write one scene's image and print every question it answers, with the answer."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("seed", type=int)
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args(argv)
    scene = make_scene(args.seed)
    render(scene).save(args.out)
    for q, a in questions(scene):
        print(f"{q}\t{a}")


if __name__ == "__main__":
    main()

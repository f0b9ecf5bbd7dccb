"""examples/scenes.py: the generated scenes the tiny VLM is trained and measured on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import scenes  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 7, scenes.HELD_OUT_SEED, scenes.HELD_OUT_SEED + 4])
def test_scene_is_a_function_of_its_seed(seed):
    a, b = scenes.make_scene(seed), scenes.make_scene(seed)
    assert a == b
    assert np.array_equal(np.asarray(scenes.render(a)), np.asarray(scenes.render(b)))


def test_every_question_has_one_answer_the_scene_implies():
    for seed in range(200):
        scene = scenes.make_scene(seed)
        places = [it.place for it in scene.items]
        assert len(set(places)) == len(places) and len({it.shape for it in scene.items}) == len(places)
        assert scene.word_place is None or scene.word_place not in places
        qa = dict(scenes.questions(scene))
        assert len(qa) == len(scenes.questions(scene))  # no question asked twice with two answers
        assert qa["How many shapes are there?"] == scenes.NUMBERS[len(scene.items)]
        for it in scene.items:
            assert qa[f"What colour is the {it.shape}?"] == it.colour
            assert qa[f"What shape is in the {it.place}?"] == it.shape
        assert qa["What word is written?"] == (scene.word or "none")


def test_render_draws_in_the_right_cells():
    scene = scenes.make_scene(scenes.HELD_OUT_SEED)
    px = np.asarray(scenes.render(scene)).astype(int)
    assert px.shape == (scenes.SIZE, scenes.SIZE, 3)
    half = scenes.SIZE // 2
    for k, place in enumerate(scenes.PLACES):
        cell = px[(k // 2) * half : (k // 2 + 1) * half, (k % 2) * half : (k % 2 + 1) * half]
        item = next((it for it in scene.items if it.place == place), None)
        colour = np.array(scenes.COLOURS[item.colour]) if item else None
        hits = (np.abs(cell - colour).sum(-1) < 10).sum() if item else 0
        assert (hits > 500) == (item is not None), place  # a shape covers > 500 px of its colour


def test_held_out_seeds_are_not_training_seeds():
    held = [scene.seed for scene, _, _ in scenes.held_out(5)]
    assert min(held) >= scenes.HELD_OUT_SEED


@pytest.mark.parametrize(
    "reply, ok", [("red", True), (" Red.", True), ("red\n", True), ("reddish", False), ("top left", False)]
)
def test_answer_matches(reply, ok):
    assert scenes.answer_matches(reply, "red") is ok


def test_cli_writes_the_image_and_lists_its_questions(tmp_path, capsys):
    out = tmp_path / "s.png"
    scenes.main(["3", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert out.exists() and [tuple(line.split("\t")) for line in lines] == scenes.questions(scenes.make_scene(3))

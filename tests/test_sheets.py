"""Pictures for people (csd2d.sheets): every view at least 256 px, enlarged by nearest neighbour, and labelled."""

import numpy as np
import pytest
from PIL import Image

from csd2d.io import InputError
from csd2d.sheets import (MIN_VIEW_SIDE, contact_sheet, label_strip, side_by_side, upscale, upscale_factor,
                          write_contact_sheet, write_side_by_side_gif)


def solid(colour, size=(64, 64)):
    return Image.new("RGB", size, colour)


def noise(size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def footprint(sheet: Image.Image, colour) -> tuple:
    """Width and height of the box holding every pixel of exactly ``colour`` (where a solid view landed)."""
    ys, xs = np.nonzero((np.asarray(sheet.convert("RGB")) == colour).all(-1))
    assert len(xs), f"colour {colour} not found"
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def is_label(strip: np.ndarray) -> bool:
    """Dark text on a light background: mostly near-white pixels, and a few dozen dark ones."""
    grey = strip.mean(-1)
    return np.median(grey) > 240 and (grey < 80).sum() > 20


@pytest.mark.parametrize("size", [(64, 64), (192, 64), (48, 100), (300, 260)])
def test_every_view_is_shown_at_least_256_px(size, tmp_path):
    k = upscale_factor(size)
    assert MIN_VIEW_SIDE >= 256 and (k == 1 or (k - 1) * min(size) < MIN_VIEW_SIDE)  # the smallest such k
    want = (size[0] * k, size[1] * k)
    assert min(want) >= 256
    red, green, blue = (200, 20, 30), (20, 180, 40), (30, 40, 210)
    grid = contact_sheet({"a": [solid(red, size), solid(green, size)], "b": [solid(blue, size), solid(red, size)]},
                         ["view 0", "view 1"])
    assert footprint(grid, green) == want and footprint(grid, blue) == want
    assert footprint(side_by_side({"input": solid(red, size), "CSD": solid(green, size)}), green) == want
    gif = tmp_path / "pair.gif"
    shades = [solid((200, 20, 30 + 40 * k), size) for k in range(3)]  # frames differ (PIL merges equal ones)
    write_side_by_side_gif(gif, {"input": shades, "CSD": [solid(green, size)] * 3}, fps=10)
    with Image.open(gif) as frames:
        assert frames.n_frames == 3
        frames.seek(2)
        assert footprint(frames.convert("RGB"), green) == want


def test_the_enlargement_is_nearest_neighbour_blocks():
    small = noise((64, 48))
    k = upscale_factor(small.size)
    assert k == 6
    blocks = np.repeat(np.repeat(np.asarray(small), k, axis=0), k, axis=1)
    assert np.array_equal(np.asarray(upscale(small, k)), blocks)
    # inside a sheet too: the view's pixels are the blocks, untouched by labels and neighbours
    sheet = np.asarray(contact_sheet({"row": [solid((0, 0, 255), small.size), small]}, ["a", "b"]))
    ys, xs = np.nonzero((sheet == (0, 0, 255)).all(-1))
    top, left = ys.min(), xs.max() + 1 + 4  # the noise view starts one gutter right of the blue one
    assert np.array_equal(sheet[top:top + blocks.shape[0], left:left + blocks.shape[1]], blocks)
    frame = np.asarray(side_by_side({"one": small, "two": noise((64, 48), seed=1)}))
    assert np.array_equal(frame[-blocks.shape[0]:, :blocks.shape[1]], blocks)


def test_labels_are_drawn_and_differ():
    a, b = np.asarray(label_strip("independent (baseline)", 256)), np.asarray(label_strip("CSD", 256))
    assert is_label(a) and is_label(b) and not np.array_equal(a, b)
    assert not is_label(np.asarray(label_strip("", 256)))  # an empty label is blank: the check can fail
    size = (64, 64)
    views = [solid((90, 160, 200), size)] * 2
    grid = np.asarray(contact_sheet({"photos": views, "CSD": views}, ["view 0", "view 29"]))
    ys, xs = np.nonzero((grid == (90, 160, 200)).all(-1))
    top, left, side = ys.min(), xs.min(), upscale_factor(size) * size[0]
    rows = [grid[top + r * (side + 4):top + r * (side + 4) + side, :left] for r in range(2)]  # left of each row
    columns = [grid[:top, left + c * (side + 4):left + c * (side + 4) + side] for c in range(2)]  # above each view
    for first, second in (rows, columns):
        assert is_label(first) and is_label(second) and not np.array_equal(first, second)
    frame = np.asarray(side_by_side({"input": views[0], "CSD": views[1]}))
    band = frame[:np.nonzero((frame == (90, 160, 200)).all(-1))[0].min()]
    halves = band[:, :side], band[:, side + 4:]
    assert is_label(halves[0]) and is_label(halves[1]) and not np.array_equal(*halves)


def test_files_are_written_whole_and_bad_inputs_are_named(tmp_path):
    path = write_contact_sheet(tmp_path / "sheet.png", {"input": [noise()], "CSD": [noise(seed=1)]})
    with Image.open(path) as sheet:
        assert sheet.height >= 2 * MIN_VIEW_SIDE
    frames = write_side_by_side_gif(tmp_path / "turn.gif", {"a": [noise(seed=k) for k in range(4)],
                                                                "b": [noise(seed=k) for k in range(3)]}, fps=10)
    assert len(frames) == 3  # as many as the shortest column
    with Image.open(tmp_path / "turn.gif") as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png", "turn.gif"]  # no temporaries left
    with pytest.raises(InputError, match="rows: expected all frames of one size"):
        contact_sheet({"a": [noise((64, 48)), noise((48, 48))]})
    with pytest.raises(ValueError, match="rows: expected 2 images in every row"):
        contact_sheet({"a": [noise(), noise()], "b": [noise()]})
    with pytest.raises(ValueError, match="column_labels: expected 1 labels"):
        contact_sheet({"a": [noise()]}, ["x", "y"])

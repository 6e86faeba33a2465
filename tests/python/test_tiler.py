import numpy as np
import pytest

import bloodcv


def test_tiles_are_views_with_offsets():
    image = np.arange(480 * 640 * 3, dtype=np.uint8).reshape(480, 640, 3)
    tiler = bloodcv.GridTiler(tile_size=(256, 256), overlap=0.15)
    tiles = tiler.tiles(image)
    assert [(t.x, t.y) for t in tiles] == [(x, y) for y in (0, 218, 224) for x in (0, 218, 384)]
    for t in tiles:
        assert t.image.shape == (256, 256, 3)
        assert np.shares_memory(t.image, image)
        np.testing.assert_array_equal(t.image, image[t.y:t.y + 256, t.x:t.x + 256])
    assert tiler.overlap_pixels == (38, 38)


def test_small_image_gives_one_padded_tile():
    image = np.full((100, 150), 7, np.uint16)
    (tile,) = bloodcv.GridTiler(tile_size=(256, 200), whole_image=True).tiles(image)
    assert tile.region == (0, 0, 150, 100)
    assert tile.image.shape == (200, 256) and tile.image.dtype == np.uint16
    assert tile.image[99, 149] == 7 and tile.image[150, 200] == 114


def test_whole_image_pass_and_plan():
    plan = bloodcv.GridTiler(tile_size=(100, 50), overlap_pixels=20, whole_image=True).plan((180, 50))
    assert [t.region for t in plan] == [(0, 0, 100, 50), (80, 0, 100, 50), (0, 0, 180, 50)]
    assert plan[2].whole_image and plan[0].image is None


def test_round_trip_cells_cut_by_seams_found_once(rng):
    width, height = 900, 600
    cells = []
    for y in range(5, height - 50, 55):
        for x in range(5, width - 50, 55):
            x1, y1 = x + rng.uniform(0, 8), y + rng.uniform(0, 8)
            cells.append([x1, y1, x1 + rng.uniform(20, 40), y1 + rng.uniform(20, 40)])
    cells = np.array(cells, np.float32)
    tiler = bloodcv.GridTiler(tile_size=(256, 256), overlap=0.2)
    tiles = tiler.plan((width, height))
    per_boxes, per_scores, cut = [], [], 0
    for t in tiles:
        local = cells - np.array([t.x, t.y, t.x, t.y], np.float32)
        clipped = np.clip(local, 0, [t.width, t.height, t.width, t.height]).astype(np.float32)
        area = (local[:, 2] - local[:, 0]) * (local[:, 3] - local[:, 1])
        visible = np.maximum(clipped[:, 2] - clipped[:, 0], 0) * np.maximum(clipped[:, 3] - clipped[:, 1], 0)
        seen = visible > 0
        cut += int((seen & (visible < area - 1e-3)).sum())
        per_boxes.append(clipped[seen])
        per_scores.append((visible / area)[seen].astype(np.float32))
    assert cut > 20
    merged = bloodcv.merge_tile_detections(tiles, per_boxes, per_scores, image_size=(width, height))
    assert len(merged["boxes"]) == len(cells)
    ious = bloodcv.box_iou(cells, merged["boxes"])
    assert (ious.max(axis=1) > 0.9999).all()
    np.testing.assert_allclose(merged["scores"], 1.0, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tile_size=(0, 10)), "tile_size"),
    (dict(overlap=1.0), "overlap_ratio"),
    (dict(tile_size=(64, 32), overlap_pixels=40), "overlap_pixels"),
])
def test_bad_tiler_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bloodcv.GridTiler(**kwargs)


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10, 5), np.uint8), "channels"),
    (np.zeros((10,), np.uint8), "shape"),
    (np.zeros((10, 10), np.int32), "dtype"),
])
def test_bad_images(image, message):
    with pytest.raises(ValueError, match=message):
        bloodcv.GridTiler(tile_size=(8, 8)).tiles(image)


def test_strided_and_flipped_images_are_cut_from_a_copy():
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (20, 40, 3), np.uint8)
    for image in [wide[:, ::2], wide[::-1], wide[:, :, ::-1], wide.transpose(1, 0, 2)]:
        tiler = bloodcv.GridTiler(tile_size=(8, 8), overlap=0.25)
        got, want = tiler.tiles(image), tiler.tiles(np.ascontiguousarray(image))
        assert [t.region for t in got] == [t.region for t in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.image, b.image)

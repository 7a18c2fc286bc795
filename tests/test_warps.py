"""Depth warps between views (csd_nerfstudio.warps): a plane warped into itself reproduces the pixel grid, a
sideways camera shifts it by the closed-form disparity, and in a two-plane scene what the near plane hides from a
view is masked."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from csd2d.align import pixel_grid, to_sample_grid  # noqa: E402
from csd_nerfstudio.warps import DepthWarps, latent_intrinsics, pool_depth  # noqa: E402

H = W = 16
F_PX = 8.0  # focal length in latent pixels: rays span ±45°
INTR = torch.tensor([F_PX, F_PX, W / 2, H / 2])


def _c2w(x: float) -> torch.Tensor:
    """A camera at (x, 0, 0) looking along −z (OpenGL axes, nerfstudio's convention)."""
    m = torch.zeros(3, 4)
    m[:, :3] = torch.eye(3)
    m[0, 3] = x
    return m


def _rays():
    uv = pixel_grid(H, W)
    return (uv[..., 0] - W / 2) / F_PX, -(uv[..., 1] - H / 2) / F_PX  # camera-axes slopes a, b (z = −1)


def _plane_depth(z: float, kind: str) -> torch.Tensor:
    a, b = _rays()
    depth = torch.full((H, W), z)
    return depth * torch.sqrt(1 + a**2 + b**2) if kind == "ray" else depth


def _two_planes(cam_x: float) -> torch.Tensor:
    """z-depth of a near half-plane (z = −2, world x <= 0) in front of a far plane (z = −10)."""
    a, _ = _rays()
    hits_near = cam_x + 2 * a <= 0
    return torch.where(hits_near, torch.tensor(2.0), torch.tensor(10.0))


@pytest.mark.parametrize("kind", ["z", "ray"])
def test_plane_warped_into_itself_reproduces_the_pixel_grid(kind):
    depth = _plane_depth(5.0, kind)
    warps = DepthWarps(torch.stack([depth, depth]), INTR.expand(2, 4), torch.stack([_c2w(0), _c2w(0)]), kind)
    grid, mask = warps.pairs(0)
    torch.testing.assert_close(grid[1], to_sample_grid(pixel_grid(H, W), H, W), atol=1e-5, rtol=0)
    assert mask[1].eq(1).all()


@pytest.mark.parametrize("kind", ["z", "ray"])
def test_sideways_camera_shifts_a_plane_by_its_disparity(kind):
    """Camera 1 sits b = 1 to the right of camera 0; a plane at depth 4 moves by f·b/z = 2 px to the left in it."""
    depth = _plane_depth(4.0, kind)
    warps = DepthWarps(torch.stack([depth, depth]), INTR.expand(2, 4), torch.stack([_c2w(0), _c2w(1.0)]), kind)
    grid, mask = warps.pairs(0)
    expected = pixel_grid(H, W) - torch.tensor([2.0, 0.0])
    torch.testing.assert_close(grid[1], to_sample_grid(expected, H, W), atol=1e-5, rtol=0)
    assert mask[1, 0, :, 2:].eq(1).all() and mask[1, 0, :, :2].eq(0).all()  # two columns leave camera 1's frame


def test_two_planes_mask_what_the_near_plane_hides():
    """Camera 0 at x = +1 sees the far plane for slopes a > −0.5 (world x_f = 1 + 10a); camera 1 at x = −1 sees such
    a point only if x_f > 4 (nearer, the half-plane hides it) and x_f < 9 (its frame)."""
    depths = torch.stack([_two_planes(1.0), _two_planes(-1.0)])
    warps = DepthWarps(depths, INTR.expand(2, 4), torch.stack([_c2w(1.0), _c2w(-1.0)]), "z")
    _, mask = warps.pairs(0)
    a, _ = _rays()
    near = 1 + 2 * a <= 0
    xf = 1 + 10 * a
    m = mask[1, 0]
    assert m[near].eq(1).all()  # the near plane is in front of everything in camera 1 too
    hidden = ~near & (xf > -3.5) & (xf < 3.5)  # away from the edges of the hidden band
    seen = ~near & (xf > 4.5) & (xf < 8.5)
    assert hidden.any() and seen.any()
    assert m[hidden].eq(0).all()
    assert m[seen].eq(1).all()
    assert m[~near & (xf > 9.5)].eq(0).all()  # outside camera 1's frame


def test_latent_intrinsics_and_pooling():
    torch.testing.assert_close(latent_intrinsics(100.0, 80.0, 64.0, 32.0, 128, 64, (8, 16)),
                               torch.tensor([12.5, 10.0, 8.0, 4.0]))
    depth = torch.arange(16.0).reshape(1, 4, 4)
    torch.testing.assert_close(pool_depth(depth, (2, 2))[0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \[2, 4\]"):
        DepthWarps(torch.ones(2, 4, 4), torch.ones(3, 4), torch.zeros(2, 3, 4), "z")
    with pytest.raises(ValueError, match="kind: expected 'ray' or 'z', got 'disparity'"):
        DepthWarps(torch.ones(2, 4, 4), torch.ones(2, 4), torch.zeros(2, 3, 4), "disparity")


@pytest.mark.parametrize("kind", ["z", "ray"])
def test_back_projection_follows_nerfstudio_rays(kind):
    """Points at depth d along nerfstudio's own rays (``Cameras.generate_rays``) are what DepthWarps back-projects,
    and they project back onto their own pixels: the pixel offset, axes and camera-to-world are nerfstudio's."""
    from nerfstudio.cameras.cameras import Cameras
    from scipy.spatial.transform import Rotation

    rot = torch.tensor(Rotation.from_euler("xyz", [20, -35, 10], degrees=True).as_matrix(), dtype=torch.float32)
    c2w = torch.cat([rot, torch.tensor([[0.3], [-0.2], [1.5]])], dim=1)
    cams = Cameras(camera_to_worlds=c2w[None], fx=11.0, fy=9.0, cx=7.0, cy=5.5, width=12, height=10)
    rays = cams.generate_rays(camera_indices=0, keep_shape=True)
    g = torch.Generator().manual_seed(0)
    ray_depth = 2.0 + torch.rand(10, 12, generator=g)
    expected = rays.origins + rays.directions * ray_depth[..., None]
    cos = (rays.directions @ -c2w[:, 2]).clamp_min(1e-6)  # the unit ray's component along the viewing axis
    depth = ray_depth if kind == "ray" else ray_depth * cos
    intr = latent_intrinsics(11.0, 9.0, 7.0, 5.5, 12, 10, (10, 12))
    warps = DepthWarps(torch.stack([depth, depth]), intr.expand(2, 4), torch.stack([c2w, c2w]), kind)
    torch.testing.assert_close(warps.points(0), expected, atol=1e-4, rtol=1e-4)
    grid, mask = warps.pairs(0)
    torch.testing.assert_close(grid[1], to_sample_grid(pixel_grid(10, 12), 10, 12), atol=1e-4, rtol=0)
    assert mask[1].eq(1).all()


def test_cached_rows_equal_recomputed_rows_and_respect_the_budget():
    """A round asks for every row on each CSD step: the cache must give each row's own grid and mask (asked in
    any order, twice) and keep no more than its budget."""
    depths = torch.stack([_two_planes(1.0), _two_planes(-1.0), _two_planes(0.3)])
    c2w = torch.stack([_c2w(1.0), _c2w(-1.0), _c2w(0.3)])
    fresh = DepthWarps(depths, INTR.expand(3, 4), c2w, "z", cache_bytes=0)
    cached = DepthWarps(depths, INTR.expand(3, 4), c2w, "z")
    for i in (2, 0, 1, 0, 2, 1):
        for got, want in zip(cached.pairs(i), fresh.pairs(i)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert sorted(cached._cache) == [0, 1, 2] and not fresh._cache
    row = sum(t.numel() * t.element_size() for t in fresh.pairs(0))
    small = DepthWarps(depths, INTR.expand(3, 4), c2w, "z", cache_bytes=2 * row)
    for i in range(3):
        small.pairs(i)
    assert sorted(small._cache) == [0, 1] and small._cached_bytes <= 2 * row
    assert small.subset([1, 2]).cache_bytes == 2 * row
    with pytest.raises(ValueError, match="cache_bytes"):
        DepthWarps(depths, INTR.expand(3, 4), c2w, "z", cache_bytes=-1)

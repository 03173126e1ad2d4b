"""The mouth bank: real mouths of the training clip looked up by lip shape (known-truth round trips)."""
from __future__ import annotations

import numpy as np
import pytest

from lipsync.model.mouth_bank import MouthBank, build_mouth_bank, mouth_blend_mask
from lipsync.topology import load_topology


def lip_vertices():
    regions = load_topology().regions
    return np.concatenate([regions["lips_inner"], regions["lips_outer"]])


@pytest.fixture(scope="module")
def bank_and_clip(prepared_grid):
    clip = prepared_grid
    frames = np.flatnonzero(np.array(clip.array("valid")))
    vertices = np.array(clip.array("vertices"), np.float32)
    bank = build_mouth_bank(clip.array("atlas"), clip.array("atlas_mask"), vertices, clip.regions()["mouth"], frames,
                            lip_vertices(), size=40)
    return bank, clip, vertices


def test_a_bank_frames_own_lip_shape_returns_its_own_mouth(bank_and_clip):
    bank, clip, vertices = bank_and_clip
    assert bank is not None and len(bank.patches) == 40
    # which clip frames went in: the patch of bank entry i is the atlas of that frame
    t, b, l, r = bank.box
    atlas = clip.array("atlas")
    own = [int(np.flatnonzero((np.asarray(atlas[:, t:b, l:r]) == p).all((1, 2, 3)))[0]) for p in bank.patches[:5]]
    index, weight = bank.weights(vertices[own])
    assert (index[:, 0] == np.arange(5)).all()
    np.testing.assert_allclose(weight[:, 0], 1.0, atol=1e-6)
    np.testing.assert_array_equal(bank.mouths(vertices[own]).round(), bank.patches[:5].astype(np.float32))


def test_weights_are_a_partition_of_unity_and_change_continuously(bank_and_clip):
    """With K > 1 the blend weights are continuous in the lip shape (synthesis shows one mouth per
    frame, chosen along the sequence by ``MouthPath``)."""
    bank, _, vertices = bank_and_clip
    k = 2
    a, b = bank.shapes[3].reshape(-1, 3), bank.shapes[30].reshape(-1, 3)
    steps = np.linspace(0, 1, 2001)
    path = np.repeat(vertices[:1], len(steps), 0)
    path[:, bank.vertices] = (1 - steps)[:, None, None] * a + steps[:, None, None] * b
    index, weight = bank.weights(path, k)
    assert index.shape == weight.shape == (len(steps), k)
    assert (weight >= 0).all()
    np.testing.assert_allclose(weight.sum(1), 1.0, atol=1e-5)
    # a bank mouth enters and leaves the blend with no weight: found by bisection, the weights
    # just before and just after each change of the nearest set agree
    def dense_at(t: float) -> np.ndarray:
        shape = vertices[:1].copy()
        shape[0, bank.vertices] = (1 - t) * a + t * b
        i, w = bank.weights(shape, k)
        out = np.zeros(len(bank.patches))
        out[i[0]] = w[0]
        return out

    support = lambda d: frozenset(np.flatnonzero(d > 0))  # noqa: E731
    changed = np.flatnonzero((np.sort(index, 1)[1:] != np.sort(index, 1)[:-1]).any(1))
    assert len(changed) > 0
    for s in changed[:10]:
        lo, hi = steps[s], steps[s + 1]
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if support(dense_at(mid)) == support(dense_at(lo)) else (lo, mid)
        assert np.abs(dense_at(hi) - dense_at(lo)).max() < 1e-3
    mouths = bank.mouths(path[[0, -1]], k)
    np.testing.assert_allclose(mouths[0], bank.patches[3], atol=0.5)
    np.testing.assert_allclose(mouths[1], bank.patches[30], atol=0.5)


def test_the_lookup_picks_the_mouth_whose_lips_part_like_the_predicted_ones():
    """Of two bank mouths, one with the predicted lips' vertical parting but a wider mouth and one
    with their width but another parting, the lookup takes the first, though it is further away
    with all coordinates weighed alike: how far the lips part decides how much of the teeth shows."""
    lips = lip_vertices()
    rng = np.random.default_rng(3)
    base = rng.normal(size=(len(lips), 3))
    sign = np.where(np.arange(len(lips)) % 2, 1.0, -1.0)
    wider, parted = base.copy(), base.copy()
    wider[:, 0] += sign * 1.0 / np.sqrt(len(lips))   # x differs from the query by a norm of 1.0
    parted[:, 1] += sign * 0.8 / np.sqrt(len(lips))  # y differs by a norm of 0.8
    patches = np.stack([np.full((4, 4, 3), 230, np.uint8), np.full((4, 4, 3), 40, np.uint8)])  # teeth / cavity
    bank = MouthBank(box=np.array([0, 4, 0, 4]), patches=patches,
                     shapes=np.stack([wider.reshape(-1), parted.reshape(-1)]).astype(np.float32),
                     vertices=lips, mask=np.ones((4, 4), np.float32))
    query = np.zeros((1, 468, 3), np.float32)
    query[0, lips] = base
    assert np.linalg.norm(bank.shapes[0] - base.reshape(-1)) > np.linalg.norm(bank.shapes[1] - base.reshape(-1))
    index, weight = bank.weights(query)
    assert index[0, 0] == 0 and weight[0, 0] == pytest.approx(1.0)
    assert (bank.mouths(query)[0] == 230).all()


def between(bank, vertices, i, j, share):
    """A mesh whose lips are ``share`` of the way from bank shape i to bank shape j."""
    mesh = vertices[:1].copy()
    mesh[0, bank.vertices] = ((1 - share) * bank.shapes[i] + share * bank.shapes[j]).reshape(-1, 3)
    return mesh


def test_the_path_keeps_one_mouth_where_the_lips_hover_between_two(bank_and_clip):
    """Lips that wander about the midpoint of two bank shapes (the nearest alternating from frame
    to frame) keep one of the two mouths; a still mouth on a bank shape is that frame's own mouth;
    lips that move for good to another bank shape get its mouth."""
    bank, _, vertices = bank_and_clip
    i = 3
    near = bank.key(bank.shapes)
    j = int(np.argsort(((near - near[i]) ** 2).sum(1))[1])  # the bank shape nearest to shape i
    # lips at 0.5 +- e of the way from i to j: the nearer mouth's gain, 2e of the squared distance
    # between the shapes (``unary``'s units), is kept below a quarter of the cost of a change
    gain = float(bank.unary(between(bank, vertices, i, j, 1.0))[0, i])
    e = 0.125 * float(bank.transition[i, j]) / gain
    assert 0 < e < 0.5
    wobble = [0.5 + (e if t % 2 else -e) for t in range(12)]
    seq = np.concatenate([between(bank, vertices, i, j, w) for w in wobble])
    nearest = bank.weights(seq)[0][:, 0]
    assert (nearest[1:] != nearest[:-1]).all()  # frame by frame the mouth would flash back and forth
    chosen = bank.frame_choice(seq)
    assert len(chosen) == len(seq) and set(chosen) <= {i, j} and len(set(chosen)) == 1
    # held on shape i, then on shape j: a change costs less than two frames a whole shape away
    assert bank.transition[i, j] < 2 * gain
    still = np.concatenate([between(bank, vertices, i, j, 0.0)] * 5 + [between(bank, vertices, i, j, 1.0)] * 5)
    np.testing.assert_array_equal(bank.frame_choice(still), [i] * 5 + [j] * 5)


def test_a_stream_of_meshes_chooses_as_a_whole_sequence(bank_and_clip):
    """``MouthPath`` fed one mesh at a time (as a live stream feeds it) decides each frame one frame
    late and chooses what ``frame_choice`` chooses for the whole sequence, with any lag."""
    from lipsync.model.mouth_bank import MouthPath

    bank, _, vertices = bank_and_clip
    seq = vertices[np.isfinite(vertices).all((1, 2))][:40]
    whole = bank.frame_choice(seq)
    path, got = MouthPath(bank), []
    for t, mesh in enumerate(seq):
        got += path.push(mesh)
        assert len(got) == t  # frame t is decided once frame t + 1 is seen
    got += path.finish()
    np.testing.assert_array_equal(got, whole)
    assert path.finish() == [] and MouthPath(bank).finish() == []
    for lag in (0, 3):
        path = MouthPath(bank, lag)
        out = [m for mesh in seq for m in path.push(mesh)] + path.finish()
        assert len(out) == len(seq) and path.finish() == []
    # without the transition cost the path is the nearest mouth of every frame
    free = MouthPath(bank, 0)
    bank.__dict__["_cache"][2]["transition"] = np.zeros_like(bank.transition)
    try:
        out = [m for mesh in seq for m in free.push(mesh)]
    finally:
        bank.__dict__.pop("_cache")
    np.testing.assert_array_equal(out, bank.weights(seq)[0][:, 0])


def test_the_path_shows_more_teeth_than_mixing_neighbouring_mouths(bank_and_clip):
    """On the clip's own lip shapes: one whole mouth per frame keeps its teeth as light as the bank
    frames', where mixing each frame's mouth with its neighbours' (a cross-fade over half a frame)
    greys them. Teeth: texels inside the lips as light as the lightest 2% of the bank's."""
    bank, _, vertices = bank_and_clip
    seq = vertices[np.isfinite(vertices).all((1, 2))][:60]
    inside = bank.mask >= 0.99
    light = np.percentile(bank.patches[:, inside].mean(-1), 98)
    teeth = lambda mouths: (mouths[:, inside].mean(-1) >= light).sum(1)  # noqa: E731
    chosen = bank.patches[bank.frame_choice(seq)].astype(np.float32)
    nearest = bank.mouths(seq)
    taps = np.array([0.107, 0.786, 0.107], np.float32)  # a Gaussian of half a frame
    padded = np.concatenate([nearest[:1], nearest, nearest[-1:]])
    mixed = taps[0] * padded[:-2] + taps[1] * padded[1:-1] + taps[2] * padded[2:]
    assert teeth(nearest).sum() > 0
    assert teeth(chosen).sum() > 1.1 * teeth(mixed).sum()


def test_paste_replaces_the_lips_and_keeps_the_rest(bank_and_clip):
    bank, clip, _ = bank_and_clip
    size = clip.atlas_size
    atlas = np.full((size, size, 4), 77.0, np.float32)
    mouth = np.full(bank.patches.shape[1:], 200.0, np.float32)
    out = bank.paste(atlas.copy(), mouth)
    t, b, l, r = bank.box
    inside = clip.regions()["mouth"]
    assert (out[inside][:, :3] == 200.0).all()
    assert (out[..., 3] == 77.0).all()  # the blend alpha is not touched
    outside = np.ones((size, size), bool)
    outside[t:b, l:r] = False
    assert (out[outside] == 77.0).all()
    # between: a smooth fade, never outside the two values
    assert ((out[..., :3] >= 77.0) & (out[..., :3] <= 200.0)).all()


def test_blend_mask_is_one_on_the_mouth_and_fades_in_the_skin():
    region = np.zeros((64, 64), bool)
    region[20:40, 15:50] = True
    mask = mouth_blend_mask(region, margin=3)
    assert (mask[region] == 1).all()
    assert mask[10, 30] == 0 and 0 < mask[19, 30] < 1


def test_frames_that_do_not_show_the_mouth_stay_out(prepared_grid):
    clip = prepared_grid
    vertices = np.array(clip.array("vertices"), np.float32)
    frames = np.flatnonzero(np.array(clip.array("valid")))[:30]
    mask = np.array(clip.array("atlas_mask"))
    mask[frames[:10]] = False  # these frames' atlases cover nothing
    vertices[frames[10:15]] = np.nan  # and these have no mesh
    bank = build_mouth_bank(clip.array("atlas"), mask, vertices, clip.regions()["mouth"], frames, lip_vertices())
    assert len(bank.patches) == 15
    assert build_mouth_bank(clip.array("atlas"), mask, vertices, clip.regions()["mouth"], frames[:15], lip_vertices()) is None


def test_round_trip_through_arrays_and_shape_checks(bank_and_clip):
    bank = bank_and_clip[0]
    again = MouthBank.from_arrays(bank.to_arrays())
    for key, value in bank.to_arrays().items():
        np.testing.assert_array_equal(getattr(again, key), value)
    with pytest.raises(ValueError):
        MouthBank(box=bank.box, patches=bank.patches[:, :-1], shapes=bank.shapes, vertices=bank.vertices, mask=bank.mask)


def test_the_bank_spans_the_lip_shapes_with_the_sharpest_frame_of_each():
    """Known truth: 300 frames of a closed mouth, 20 of a rare wide-open shape, 20 of a rounded
    one; each frame with a known detail. Evenly spaced frames would keep mostly closed mouths;
    ``cover_shapes`` keeps every shape, and of each group the frames with the most detail."""
    from lipsync.model.mouth_bank import cover_shapes

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    group = np.repeat([0, 1, 2], [300, 20, 20])
    shapes = centres[group] + rng.normal(0, 0.05, (len(group), 2))
    detail = rng.random(len(group))
    picked = cover_shapes(shapes, detail, 6)
    assert len(picked) <= 6 and (np.diff(picked) > 0).all()
    assert set(group[picked]) == {0, 1, 2}
    for g in (1, 2):  # a rare shape: its sharpest frame is among the picks
        members = np.flatnonzero(group == g)
        assert members[np.argmax(detail[members])] in picked
    even = np.linspace(0, len(group) - 1, 6).round().astype(int)
    assert set(group[even]) != {0, 1, 2}  # what the evenly spaced choice would have missed
    np.testing.assert_array_equal(cover_shapes(shapes[:5], detail[:5], 6), np.arange(5))


def test_patch_detail_ignores_the_edges_of_unseen_texels():
    from lipsync.model.mouth_bank import patch_detail

    flat = np.full((20, 30, 3), 128, np.uint8)
    seen = np.ones((20, 30), bool)
    holed = flat.copy()
    holed[5:10, 5:10] = 0        # an unseen hole (zeros) in a flat patch
    seen_holed = seen.copy()
    seen_holed[5:10, 5:10] = False
    assert patch_detail(holed, seen_holed) == 0.0
    assert patch_detail(holed, seen) > 100   # counted as detail if it were seen
    textured = (flat + np.random.default_rng(0).integers(0, 40, (20, 30, 1))).astype(np.uint8)
    assert patch_detail(textured, seen) > patch_detail(flat, seen)


def test_on_real_frames_the_bank_reaches_the_rarest_shape_and_is_sharper_than_evenly_spaced_frames(prepared_grid):
    from lipsync.model.mouth_bank import patch_detail

    clip = prepared_grid
    frames = np.flatnonzero(np.array(clip.array("valid")))
    vertices = np.array(clip.array("vertices"), np.float32)
    lips = lip_vertices()
    bank = build_mouth_bank(clip.array("atlas"), clip.array("atlas_mask"), vertices, clip.regions()["mouth"], frames, lips, size=15)
    shapes = vertices[frames][:, lips].reshape(len(frames), -1)
    even = frames[np.linspace(0, len(frames) - 1, 15).round().astype(int)]

    def gap(bank_shapes):  # how far the rarest lip shape of the clip is from the nearest kept one
        return float(np.sqrt(((shapes[:, None] - bank_shapes[None]) ** 2).sum(-1)).min(1).max())

    assert gap(bank.shapes) < 0.9 * gap(vertices[even][:, lips].reshape(15, -1))
    t, b, l, r = bank.box
    mouth = clip.regions()["mouth"][t:b, l:r]
    atlas, mask = clip.array("atlas"), clip.array("atlas_mask")
    kept = np.mean([patch_detail(p, mouth) for p in bank.patches])
    spaced = np.mean([patch_detail(np.asarray(atlas[f, t:b, l:r]), np.asarray(mask[f, t:b, l:r]) & mouth) for f in even])
    assert kept > spaced


def test_one_mouth_per_frame_is_sharper_than_a_blend_of_two(bank_and_clip):
    """The default takes each frame's nearest bank mouth: at the lip shapes of frames that are not
    in the bank it has more detail than the blend of the two nearest (teeth of two frames overlaid)."""
    from lipsync.model.mouth_bank import patch_detail

    bank, _, vertices = bank_and_clip
    others = [f for f in range(len(vertices)) if np.isfinite(vertices[f]).all()
              and np.sqrt(((bank.shape_of(vertices[f:f + 1]) - bank.shapes) ** 2).sum(1)).min() > 1e-4]
    assert len(others) >= 10
    seen = bank.mask > 0.99
    one = np.mean([patch_detail(m.round().astype(np.uint8), seen) for m in bank.mouths(vertices[others])])
    two = np.mean([patch_detail(m.round().astype(np.uint8), seen) for m in bank.mouths(vertices[others], 2)])
    assert one > two


# ----- following the teeth the audio predicts ------------------------------------------------------

PALE, LIP, SKIN, DARK = (235, 225, 200), (190, 70, 80), (215, 160, 130), (70, 25, 30)


def mouth_patch(teeth_rows: int) -> np.ndarray:
    """A 12x12 mouth: skin corners, a red lip ring, and a 6x6 inside whose first ``teeth_rows``
    rows are pale teeth and the rest the dark cavity."""
    p = np.empty((12, 12, 3), np.uint8)
    p[:] = SKIN
    p[2:10, 2:10] = LIP
    p[3:9, 3:9] = DARK
    p[3:3 + teeth_rows, 3:9] = PALE
    return p


def regions_of_patch():
    inside = np.zeros((12, 12), bool)
    inside[3:9, 3:9] = True
    mouth = np.zeros((12, 12), bool)
    mouth[2:10, 2:10] = True
    return inside, mouth


def test_teeth_fraction_counts_the_pale_texels_inside_the_lips():
    from lipsync.model.mouth_bank import teeth_fraction, tooth_colours

    inside, mouth = regions_of_patch()
    patches = np.stack([mouth_patch(k) for k in (0, 2, 3)])
    colours = tooth_colours(patches, mouth & ~inside, ~mouth)
    assert colours is not None
    for k in range(7):
        assert teeth_fraction(mouth_patch(k), inside, colours) == pytest.approx(k / 6)
    seen = np.ones((12, 12), bool)
    seen[3:9, 3:6] = False  # half the inside unseen: counted over the seen half
    assert teeth_fraction(mouth_patch(3), inside, colours, seen) == pytest.approx(0.5)
    seen[3:9, 6] = False    # under half seen: unknown
    assert np.isnan(teeth_fraction(mouth_patch(3), inside, colours, seen))
    assert tooth_colours(patches, np.zeros((12, 12), bool), ~mouth) is None


def test_the_teeth_readout_recovers_a_linear_signal_and_spreads_as_the_real_areas():
    """Known truth: teeth areas linear in one of four audio-code dimensions plus noise. The read-out
    predicts the held-out frames' areas, spreads as far as they do (the ridge alone hedges), and is
    refused for a speaker whose footage shows no teeth."""
    from lipsync.model.mouth_bank import TEETH_STRETCH, fit_teeth_probe

    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 4))
    y = np.clip(0.1 + 0.06 * z[:, 2] + rng.normal(0, 0.02, 600), 0, 1)
    y[5] = np.nan  # an unseen mouth is left out
    train, val = np.arange(500), np.arange(500, 600)
    probe, var = fit_teeth_probe(z, y, train, val)
    assert probe.shape == (5,) and var == pytest.approx(np.nanvar(y[train]), rel=1e-6)
    pred = z @ probe[:-1] + probe[-1]
    assert np.corrcoef(pred[val], y[val])[0, 1] > 0.9
    assert pred[val].std() == pytest.approx(y[val].std(), rel=1e-3)  # stretched to the real spread
    assert abs(probe[2]) > 10 * np.abs(probe[[0, 1, 3]]).max()
    # without validation frames it keeps the ridge's own (hedged, narrower) spread
    hedged, _ = fit_teeth_probe(z, y, train, np.zeros(0, np.int64))
    assert TEETH_STRETCH[0] == 1.0 and (z[val] @ hedged[:-1]).std() < 0.95 * y[val].std()
    assert fit_teeth_probe(z, np.full(600, 0.02), train, val) is None


def test_the_path_takes_the_mouth_with_the_teeth_the_audio_predicts():
    """Two bank mouths with the same lip shape, one showing teeth and one not: by lip shape alone
    the path cannot tell them apart (it keeps the first); with a read-out that expects teeth when
    the code's first value is high, each frame gets the mouth the audio calls for, also when the
    codes arrive one frame at a time as in a live stream, and the bank survives a round trip."""
    from lipsync.model.mouth_bank import MouthPath

    inside, mouth = regions_of_patch()
    lips = lip_vertices()
    shape = np.random.default_rng(1).normal(size=(len(lips), 3)).astype(np.float32)
    mask = mouth_blend_mask(mouth, margin=1)
    bank = MouthBank(box=np.array([0, 12, 0, 12]), patches=np.stack([mouth_patch(0), mouth_patch(4)]),
                     shapes=np.stack([shape.reshape(-1)] * 2), vertices=lips, mask=mask,
                     teeth=np.array([0.0, 4 / 6], np.float32), teeth_probe=np.array([0.5, 0.1, 0.1], np.float32),
                     teeth_var=np.array([0.04], np.float32))
    assert bank.follows_teeth
    meshes = np.zeros((8, 468, 3), np.float32)
    meshes[:, lips] = shape
    codes = np.zeros((8, 2), np.float32)
    codes[3:6, 0] = 1.2  # expects 0.7 of the inside as teeth on frames 3-5
    np.testing.assert_array_equal(bank.frame_choice(meshes), [0] * 8)
    np.testing.assert_array_equal(bank.frame_choice(meshes, codes), [0, 0, 0, 1, 1, 1, 0, 0])
    path = MouthPath(bank)
    streamed = [m for v, c in zip(meshes, codes) for m in path.push(v, c)] + path.finish()
    np.testing.assert_array_equal(streamed, [0, 0, 0, 1, 1, 1, 0, 0])
    again = MouthBank.from_arrays(bank.to_arrays())
    assert again.follows_teeth and set(bank.to_arrays()) == {"box", "patches", "shapes", "vertices", "mask", "teeth", "teeth_probe", "teeth_var"}
    np.testing.assert_array_equal(again.frame_choice(meshes, codes), [0, 0, 0, 1, 1, 1, 0, 0])
    # a bank without the read-out (an older model's) ignores the codes
    plain = MouthBank.from_arrays({k: v for k, v in bank.to_arrays().items() if not k.startswith("teeth")})
    assert not plain.follows_teeth
    np.testing.assert_array_equal(plain.frame_choice(meshes, codes), [0] * 8)
    with pytest.raises(ValueError, match="teeth read-out"):
        MouthBank(box=bank.box, patches=bank.patches, shapes=bank.shapes, vertices=lips, mask=mask, teeth=bank.teeth)
    with pytest.raises(ValueError, match="audio codes"):
        bank.frame_choice(meshes, np.zeros((8, 3), np.float32))

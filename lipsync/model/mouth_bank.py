"""The mouth bank: the speaker's own mouths from the training video, looked up by lip shape.

The network predicts the lower face at a reduced resolution, which leaves the teeth and the
inside of the mouth soft and tied loosely to the predicted lips. The bank keeps, for training
frames that span the speaker's lip shapes (the sharpest of each neighbourhood of shapes), the
mouth region of the (pose- and lighting-normalized) atlas at full resolution, together with that
frame's lip shape (the lip vertices of its pose-normalized mesh).
At synthesis each frame's mouth is the bank mouth whose lip shape is nearest to the predicted
one (the vertical coordinate weighed twice the others, ``AXIS_WEIGHTS``), so teeth and tongue
are real pixels of this speaker, opened as far as the predicted lips are (the "teeth proxy" of
Suwajanakorn et al. 2017, here for the whole mouth).

Which bank mouth each frame shows is decided over the sequence (``MouthPath``), not frame by
frame: the choice minimizes, along the frames, the lip-shape distance plus a cost for changing to
a mouth that looks different (``TRANSITION``), decided one frame late (``LAG``). Where the lip
shape passes between two bank shapes the nearest one alternates; the path keeps one mouth there,
so no mouth flashes in for a single frame, and each frame still shows one whole real mouth. An
earlier version mixed the mouths of neighbouring frames over a short Gaussian in time instead:
on the GRID evaluation clips (atlas space, the same network) the chosen mouths showed 0.69 of the
real mouths' teeth against 0.735 for the path, because a cross-fade with a closed mouth greys the
teeth, and it left more single-frame jumps of the teeth area (32 against 23; the real mouths' 24).

Blending the K > 1 nearest mouths of one frame (Shepard's modified inverse-distance weights,
``((1 - d / d_K+1)+ / d)^2``, which are continuous in the lip shape and exact at a bank frame;
``MouthBank.weights``) overlays teeth of different frames and was measurably softer: on the GRID
evaluation clips, with a 1000-mouth bank and the same network, K = 2 gave a mouth sharpness of
0.84 of the real video's against 0.86 for K = 1 and showed no more teeth.

The lip shape does not tell how much of the teeth shows: the jaw, the tongue and the lips' own
curl do. So the bank also knows each mouth's teeth area (``teeth_fraction``: tooth-coloured texels
inside the inner lips) and holds a linear read-out from the network's audio code to the teeth area
the speaker shows (``fit_teeth_probe``, fitted on the training frames after training and scaled
so its predictions spread as far as the real areas on the validation frames: a regression hedges
towards the mean). The path's cost adds the squared difference between a mouth's teeth area and
the predicted one (``TEETH_WEIGHT``). On the GRID evaluation clips (atlas space, the same network,
``tools/bank_teeth.py``) the chosen mouths showed 0.80 of the real mouths' teeth area instead of
0.69, and their teeth followed the real ones more closely (per-frame correlation 0.69 instead of
0.61); the network's own predicted texture as the key instead moved neither (it is too soft to
show teeth), nor did the bank mouths' own training audio. Banks without the read-out choose by
lip shape alone.

Plain numpy; no torch. Shapes: N bank frames, L lip vertices, (h, w) the mouth box in texels,
D the network's audio code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common import check_shape

BANK_FRAMES = 250      # at most this many training frames are kept (one per cluster of lip shapes)
NEIGHBOURS = 1         # bank mouths blended by ``MouthBank.weights`` unless told otherwise
COVERAGE = 0.98        # share of the mouth region a frame's atlas must cover to enter the bank
MARGIN = 3             # texels of skin kept around the lips, so the blend fades out in skin
TRANSITION = 0.1       # weight of the change of mouth appearance against the lip-shape distance in the path
LAG = 1                # frames of the future the path sees before it decides a frame's mouth
LOCAL = 32             # lip shapes a frame's detail is compared with when the bank is chosen
LOCAL_QUANTILE = 0.5   # ... and the share of them it must be at least as detailed as to be a candidate
SNAP = 1e-4            # a lip shape this close to a bank shape (relative to the K+1-th distance) is that shape
TEETH_WEIGHT = 4.0     # weight of the teeth-area difference (in units of its variance) against the lip-shape distance
TEETH_RIDGE = 0.25     # ridge penalty of the teeth read-out, per training frame (on standardized audio codes)
TEETH_STRETCH = (1.0, 3.0)  # range of the read-out's scaling to the real areas' spread on the validation frames
TEETH_MIN_SPREAD = 0.01     # below this std of the training frames' teeth area the speaker shows no teeth to follow
COLOUR_FRAMES = 60     # training frames the speaker's lip and skin colours are taken from
# weights of the canonical x (across), y (vertical) and z (depth) coordinates of the lip vertices in the
# distance that finds a frame's bank mouth: how far apart the lips are vertically decides how much
# of the teeth shows, so it counts more than the mouth's width and protrusion (see ``MouthBank.key``)
AXIS_WEIGHTS = (0.5, 1.0, 0.5)
KEYS = ("box", "patches", "shapes", "vertices", "mask")
TEETH_KEYS = ("teeth", "teeth_probe", "teeth_var")  # optional: banks of older models lack them


@dataclass
class MouthBank:
    """Members: box int64 (4,) = top, bottom, left, right of the mouth box in atlas texels;
    patches uint8 (N, h, w, 3) the atlas inside the box; shapes float32 (N, 3L) lip shapes;
    vertices int64 (L,) the lip vertices the shapes are made of; mask float32 (h, w) in [0, 1],
    where the bank's mouth replaces the network's (1 inside the lips, fading to 0 in the skin).
    Optional, together: teeth float32 (N,) each mouth's ``teeth_fraction``; teeth_probe float32
    (D + 1,) the read-out of the expected teeth area from an audio code (weights, then bias);
    teeth_var float32 (1,) the training frames' teeth-area variance (the unit of its cost)."""
    box: np.ndarray
    patches: np.ndarray
    shapes: np.ndarray
    vertices: np.ndarray
    mask: np.ndarray
    teeth: np.ndarray | None = None
    teeth_probe: np.ndarray | None = None
    teeth_var: np.ndarray | None = None

    def __post_init__(self):
        t, b, l, r = (int(v) for v in self.box)
        n = len(self.patches)
        check_shape("mouth bank patches", self.patches, (n, b - t, r - l, 3))
        check_shape("mouth bank shapes", self.shapes, (n, 3 * len(self.vertices)))
        check_shape("mouth bank mask", self.mask, (b - t, r - l))
        given = [getattr(self, k) is not None for k in TEETH_KEYS]
        if any(given) and not all(given):
            raise ValueError("the teeth read-out needs all of " + ", ".join(TEETH_KEYS))
        if all(given):
            check_shape("mouth bank teeth", self.teeth, (n,))
            check_shape("mouth bank teeth variance", self.teeth_var, (1,))
            if self.teeth_probe.ndim != 1 or len(self.teeth_probe) < 2:
                raise ValueError(f"mouth bank teeth read-out has shape {self.teeth_probe.shape}, expected (D + 1,)")

    @property
    def follows_teeth(self) -> bool:
        """Whether the path also matches the teeth area predicted from the audio code."""
        return self.teeth_probe is not None

    def expected_teeth(self, latents: np.ndarray) -> np.ndarray:
        """float64 (T,): the teeth area the read-out expects for audio codes (T, D)."""
        z = np.asarray(latents, np.float64).reshape(len(latents), -1)
        w = np.asarray(self.teeth_probe, np.float64)
        if z.shape[1] != len(w) - 1:
            raise ValueError(f"audio codes of {z.shape[1]} values for a teeth read-out of {len(w) - 1}")
        return z @ w[:-1] + w[-1]

    def shape_of(self, vertices: np.ndarray) -> np.ndarray:
        """float32 (T, 3L): the lip shapes of meshes (T, V, 3) in the speaker's canonical units."""
        return np.asarray(vertices, np.float32)[:, self.vertices].reshape(len(vertices), -1)

    def key(self, shapes: np.ndarray) -> np.ndarray:
        """float64 (T, 3L): lip shapes (T, 3L) with each coordinate scaled by ``AXIS_WEIGHTS``, the
        space in which bank mouths are looked up.

        The bank mouth is drawn on the predicted lips whichever it is, so the choice decides only
        what shows between them. Weighing the vertical coordinate twice the others picks mouths
        whose lips part like the predicted ones: in the GRID evaluation (``make eval``, the same
        trained models) the output's teeth went from 0.50 to 0.54 of the real video's, its
        sharpness unchanged."""
        w = np.tile(np.asarray(AXIS_WEIGHTS, np.float64), len(self.vertices))
        return np.asarray(shapes, np.float64) * w[None]

    def weights(self, vertices: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
        """(index int64 (T, K), weight float32 (T, K) summing to 1) of the bank mouths for meshes
        (T, V, 3), by distance between lip shapes in ``key`` space."""
        d = np.sqrt(self.unary(vertices))  # scaled distances: the weights depend only on their ratios
        k = max(1, min(k, d.shape[1] - 1))
        near = np.argpartition(d, k, axis=1)[:, :k + 1]
        dn = np.take_along_axis(d, near, 1)
        order = np.argsort(dn, axis=1)
        near, dn = np.take_along_axis(near, order, 1), np.take_along_axis(dn, order, 1)
        far = np.maximum(dn[:, k:k + 1], 1e-12)
        # at (numerically) a bank shape, or with all K tied with the (K+1)-th: the nearest alone
        exact = (dn[:, :1] <= SNAP * far) | (dn[:, k - 1:k] >= far)
        w = (np.maximum(0.0, 1.0 - dn[:, :k] / far) / np.maximum(dn[:, :k], SNAP * far)) ** 2
        w = np.where(exact, np.eye(1, k), w / np.maximum(w.sum(1, keepdims=True), 1e-300))
        return near[:, :k].astype(np.int64), w.astype(np.float32)

    def frame_choice(self, vertices: np.ndarray, latents: np.ndarray | None = None) -> np.ndarray:
        """int64 (T,): the bank mouth of each frame of a sequence of meshes (T, V, 3) and their
        audio codes (T, D) (used when the bank ``follows_teeth``), chosen along the sequence by
        ``MouthPath`` (as a live stream chooses them, one frame late)."""
        path = MouthPath(self)
        vertices = np.asarray(vertices, np.float32)
        codes = [None] * len(vertices) if latents is None else np.asarray(latents, np.float32).reshape(len(vertices), -1)
        out = [i for v, z in zip(vertices, codes) for i in path.push(v, z)]
        return np.asarray(out + path.finish(), np.int64)

    def unary(self, vertices: np.ndarray, latents: np.ndarray | None = None) -> np.ndarray:
        """float64 (T, N): squared ``key``-space distance of each mesh's (T, V, 3) lip shape to each
        bank shape, in units of the bank's typical nearest-neighbour distance (so the cost does not
        depend on the speaker's size or the bank's density); with audio codes (T, D) and a bank
        that ``follows_teeth``, plus ``TEETH_WEIGHT`` times the squared difference between each
        mouth's teeth area and the expected one, in units of the training frames' variance."""
        cost = _square_distances(self.key(self.shape_of(vertices)), self._scales["keys"]) / self._scales["shape"]
        if latents is not None and self.follows_teeth:
            gap = self.teeth.astype(np.float64)[None] - self.expected_teeth(latents)[:, None]
            cost += TEETH_WEIGHT * gap ** 2 / max(float(self.teeth_var[0]), 1e-12)
        return cost

    @property
    def transition(self) -> np.ndarray:
        """float64 (N, N): the cost of going from bank mouth i to j in a path, ``TRANSITION`` times
        their mean squared colour difference on the lips and inside them, in units of the bank's
        typical nearest-neighbour difference; 0 on the diagonal."""
        return self._scales["transition"]

    @property
    def _scales(self) -> dict:
        """The bank's lookup keys and the path's cost units, computed once per bank."""
        cached = self.__dict__.get("_cache")
        if cached is None or cached[0] is not self.patches or cached[1] is not self.shapes:
            keys = self.key(self.shapes)
            pixels = self.patches[:, self.mask >= 0.99].reshape(len(self.patches), -1).astype(np.float64)
            appearance = _square_distances(pixels, pixels) / max(pixels.shape[1], 1)
            scales = {"keys": keys, "shape": _nearest_scale(_square_distances(keys, keys)),
                      "transition": TRANSITION * appearance / _nearest_scale(appearance)}
            cached = (self.patches, self.shapes, scales)
            self.__dict__["_cache"] = cached
        return cached[2]

    def blend(self, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """float32 (h, w, 3) in 0..255: one frame's mouth from a row of ``weights``' output."""
        return np.tensordot(np.asarray(weight, np.float32), self.patches[index].astype(np.float32), axes=1)

    def mouths(self, vertices: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
        """float32 (T, h, w, 3) in 0..255: the blended bank mouth of each mesh (T, V, 3), each frame
        on its own (``frame_choice`` chooses along a sequence)."""
        idx, w = self.weights(vertices, k)
        return np.stack([self.blend(i, wi) for i, wi in zip(idx, w)])

    def paste(self, atlas: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """``atlas`` (S, S, C>=3) float 0..255 with ``mouth`` (h, w, 3) blended into the box, in place."""
        t, b, l, r = (int(v) for v in self.box)
        m = self.mask[..., None]
        atlas[t:b, l:r, :3] = atlas[t:b, l:r, :3] * (1.0 - m) + mouth * m
        return atlas

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in KEYS + TEETH_KEYS if getattr(self, k) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "MouthBank":
        teeth = {k: np.asarray(arrays[k], np.float32) for k in TEETH_KEYS if k in arrays}
        return cls(box=np.asarray(arrays["box"], np.int64), patches=np.asarray(arrays["patches"], np.uint8),
                   shapes=np.asarray(arrays["shapes"], np.float32), vertices=np.asarray(arrays["vertices"], np.int64),
                   mask=np.asarray(arrays["mask"], np.float32), **teeth)


def mouth_blend_mask(mouth_region: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    """float32 (S, S): 1 on the lips and inside them, fading to 0 over ``margin`` texels of skin."""
    import cv2

    k = 2 * margin + 1
    grown = cv2.dilate(mouth_region.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    soft = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), margin / 2.0)
    return np.clip(np.maximum(soft, mouth_region), 0, 1).astype(np.float32)


def build_mouth_bank(atlas, atlas_mask, vertices: np.ndarray, mouth_region: np.ndarray, frames: np.ndarray, lip_vertices: np.ndarray,
                     *, interior: np.ndarray | None = None, fill: np.ndarray | None = None,
                     size: int = BANK_FRAMES) -> MouthBank | None:
    """A bank from the atlases (T, S, S, 3) uint8 (may be memory-mapped), their coverage masks
    (T, S, S) bool, the meshes (T, V, 3), the atlas's mouth region (S, S) bool (lips and the
    inside of the mouth), the candidate frames (e.g. the usable training frames) and the lip
    vertex indices. Only frames whose atlas covers the lips (the mouth region less ``interior``,
    (S, S) bool: a closed mouth shows no interior) and whose mesh is finite enter; at most
    ``size``, one per cluster of lip shapes (``cover_shapes``). Texels a frame does not cover are
    taken from ``fill`` (S, S, 3), e.g. the reference atlas. None when fewer than NEIGHBOURS + 1
    frames qualify."""
    mask = mouth_blend_mask(mouth_region)
    rows, cols = np.nonzero(mask > 0)
    if not len(rows):
        return None
    t, b, l, r = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    region = mouth_region[t:b, l:r] & (True if interior is None else ~interior[t:b, l:r])
    frames = np.asarray(frames, np.int64)
    finite = np.isfinite(np.asarray(vertices[frames][:, lip_vertices])).all((1, 2))
    frames = frames[finite]
    covered = np.array([np.asarray(atlas_mask[f, t:b, l:r])[region].mean() >= COVERAGE for f in frames], bool) \
        if len(frames) else np.zeros(0, bool)
    frames = frames[covered]
    if len(frames) < NEIGHBOURS + 1:
        return None
    if len(frames) > size:
        mouth = mouth_region[t:b, l:r]
        detail = np.array([patch_detail(np.asarray(atlas[f, t:b, l:r]), np.asarray(atlas_mask[f, t:b, l:r]) & mouth)
                           for f in frames])
        shapes = np.asarray(vertices[frames][:, lip_vertices], np.float64).reshape(len(frames), -1)
        frames = frames[cover_shapes(shapes, detail, size)]
    patches = np.stack([np.asarray(atlas[f, t:b, l:r]) for f in frames]).astype(np.uint8)
    if fill is not None:
        seen = np.stack([np.asarray(atlas_mask[f, t:b, l:r]) for f in frames])
        patches = np.where(seen[..., None], patches, np.asarray(fill, np.uint8)[None, t:b, l:r])
    bank = MouthBank(box=np.array([t, b, l, r], np.int64), patches=patches, shapes=np.zeros((len(frames), 3 * len(lip_vertices)), np.float32),
                     vertices=np.asarray(lip_vertices, np.int64), mask=mask[t:b, l:r])
    bank.shapes = bank.shape_of(np.asarray(vertices[frames]))
    return bank


def lab(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIELAB of an RGB uint8 image (..., 3): L* in 0-100, a*, b* around 0 (float32 each)."""
    import cv2

    x = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.float32)
    return x[..., 0] * (100.0 / 255.0), x[..., 1] - 128.0, x[..., 2] - 128.0


def is_tooth(L: np.ndarray, a: np.ndarray, b: np.ndarray, lip_l: float, skin_a: float, skin_chroma: float) -> np.ndarray:
    """Tooth-coloured pixels: as light as the lips (median L*) and no redder (a*) nor more saturated
    (chroma) than the skin (medians): teeth are pale, lips red and the mouth's inside dark."""
    return (L >= lip_l) & (a <= skin_a) & (np.hypot(a, b) <= skin_chroma)


@dataclass(frozen=True)
class ToothColours:
    """The speaker's thresholds for ``is_tooth``, measured in the atlas (``tooth_colours``)."""
    lip_l: float
    skin_a: float
    skin_chroma: float


def tooth_colours(patches: np.ndarray, lips: np.ndarray, skin: np.ndarray) -> ToothColours | None:
    """Median lip lightness and skin redness and chroma over mouth patches (K, h, w, 3) uint8, on
    the texels ``lips`` and ``skin`` (h, w) bool mark; None when either is empty."""
    if not lips.any() or not skin.any() or not len(patches):
        return None
    lip_l, skin_a, skin_c = [], [], []
    for p in patches:
        L, a, b = lab(p)
        lip_l.append(np.median(L[lips]))
        skin_a.append(np.median(a[skin]))
        skin_c.append(np.median(np.hypot(a, b)[skin]))
    return ToothColours(float(np.median(lip_l)), float(np.median(skin_a)), float(np.median(skin_c)))


def teeth_fraction(patch: np.ndarray, interior: np.ndarray, colours: ToothColours, seen: np.ndarray | None = None) -> float:
    """Share of the inner-lip texels ``interior`` (h, w) bool of a mouth patch (h, w, 3) uint8 that
    are tooth-coloured, over the ones ``seen`` (h, w) bool (all when None); NaN when under half of
    them are seen."""
    inside = interior if seen is None else interior & seen
    if inside.sum() < 0.5 * max(int(interior.sum()), 1):
        return float("nan")
    L, a, b = lab(patch)
    return float(is_tooth(L, a, b, colours.lip_l, colours.skin_a, colours.skin_chroma)[inside].mean())


def fit_teeth_probe(latents: np.ndarray, teeth: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The read-out of a frame's teeth area from its audio code: ridge regression (``TEETH_RIDGE``
    per frame, on standardized codes) of ``teeth`` (T,) on ``latents`` (T, D) over the frames
    ``train`` (indices), scaled about the mean so that its predictions on the frames ``val``
    spread as far as their real areas (within ``TEETH_STRETCH``). Returns (weights then bias
    float32 (D + 1,), the training frames' variance), or None when the training frames show no
    teeth to follow (spread under ``TEETH_MIN_SPREAD``). NaN areas (unseen mouths) are left out."""
    z = np.asarray(latents, np.float64).reshape(len(latents), -1)
    y = np.asarray(teeth, np.float64)
    ok = np.isfinite(y) & np.isfinite(z).all(1)
    train = np.asarray(train, np.int64)[ok[np.asarray(train, np.int64)]]
    val = np.asarray(val, np.int64)[ok[np.asarray(val, np.int64)]]
    if len(train) < 2 or y[train].std() < TEETH_MIN_SPREAD:
        return None
    mu, sd = z[train].mean(0), z[train].std(0) + 1e-6
    a = (z[train] - mu) / sd
    y0 = y[train].mean()
    w = np.linalg.solve(a.T @ a + TEETH_RIDGE * len(train) * np.eye(a.shape[1]), a.T @ (y[train] - y0))
    stretch = TEETH_STRETCH[0]
    if len(val) >= 2:
        spread = (((z[val] - mu) / sd) @ w).std()
        if spread > 0:
            stretch = float(np.clip(y[val].std() / spread, *TEETH_STRETCH))
    weights = stretch * w / sd
    return np.append(weights, y0 - mu @ weights).astype(np.float32), float(y[train].var())


def add_teeth_readout(bank: MouthBank, atlas, atlas_mask, interior: np.ndarray, mouth_region: np.ndarray, latents: np.ndarray,
                      train: np.ndarray, val: np.ndarray) -> MouthBank:
    """``bank`` with its mouths' teeth areas and the read-out of the teeth area from audio codes
    (``fit_teeth_probe``), from the training atlases (T, S, S, 3) uint8 and their coverage (T, S, S)
    bool (may be memory-mapped), the atlas's inner-lip texels ``interior`` and mouth region (S, S)
    bool, the audio codes (T, D) of the trained network and the training and validation frames.
    The bank is returned unchanged when the speaker's colours cannot be measured or the footage
    shows no teeth."""
    t, b, l, r = (int(v) for v in bank.box)
    inner = np.asarray(interior, bool)[t:b, l:r]
    mouth = np.asarray(mouth_region, bool)[t:b, l:r]
    frames = np.concatenate([np.asarray(train, np.int64), np.asarray(val, np.int64)])
    sample = np.asarray(train, np.int64)[np.unique(np.linspace(0, len(train) - 1, min(COLOUR_FRAMES, len(train))).round().astype(int))] \
        if len(train) else np.zeros(0, np.int64)
    colours = tooth_colours(np.stack([np.asarray(atlas[f, t:b, l:r]) for f in sample]) if len(sample) else np.zeros((0,)),
                            mouth & ~inner, ~mouth & (bank.mask == 0))
    if colours is None or not inner.any():
        return bank
    teeth = np.full(len(latents), np.nan)
    for f in frames:
        teeth[f] = teeth_fraction(np.asarray(atlas[f, t:b, l:r]), inner, colours, np.asarray(atlas_mask[f, t:b, l:r]))
    fit = fit_teeth_probe(latents, teeth, train, val)
    if fit is None:
        return bank
    bank.teeth = np.array([teeth_fraction(p, inner, colours) for p in bank.patches], np.float32)
    bank.teeth_probe, bank.teeth_var = fit[0], np.array([fit[1]], np.float32)
    return bank


def patch_detail(patch: np.ndarray, seen: np.ndarray) -> float:
    """Variance of the Laplacian of a patch's luminance (H, W, 3) uint8 on the texels ``seen``
    (H, W) bool marks, their neighbours seen too (so no edge of an unseen hole counts)."""
    import cv2

    inside = cv2.erode(seen.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if not inside.any():
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=3)[inside].var())


def cover_shapes(shapes: np.ndarray, detail: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of at most ``size`` of the rows of ``shapes`` (N, D) that cover them.

    Evenly spaced frames over-represent the commonest lip shapes (a closed mouth) and include
    frames blurred by motion or compression. Here the candidates are the frames whose ``detail``
    (N,) is among the top half of their ``LOCAL`` nearest lip shapes (``LOCAL_QUANTILE``;
    at least ``size`` frames, the best ranked first), so the sharpest frame of every
    neighbourhood is a candidate and blurred ones leave even where few frames share a shape.
    The candidates are grouped by k-means into ``size`` clusters (started from farthest-point
    centres, so rare shapes get clusters of their own) and the most detailed member of each is
    kept: the bank spans the speaker's lip shapes with the crispest teeth and lips of each."""
    import warnings

    from scipy.cluster.vq import kmeans2
    from scipy.spatial import cKDTree

    shapes, detail = np.asarray(shapes, np.float64), np.asarray(detail, np.float64)
    if len(shapes) <= size:
        return np.arange(len(shapes))
    _, near = cKDTree(shapes).query(shapes, k=min(LOCAL, len(shapes)))
    beaten = (detail[near] > detail[:, None]).mean(1)  # share of the neighbours with more detail
    order = np.argsort(beaten, kind="stable")
    keep = max(size, int(np.sum(beaten <= 1.0 - LOCAL_QUANTILE)))
    candidates = np.sort(order[:keep])
    if len(candidates) <= size:
        return candidates
    points = shapes[candidates]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster only means fewer frames
        _, labels = kmeans2(points, farthest_points(points, size, seed=seed), minit="matrix", iter=10)
    best = np.lexsort((-detail[candidates], labels))  # by cluster, the most detailed first
    first = best[np.r_[True, labels[best][1:] != labels[best][:-1]]]
    return np.sort(candidates[first])


def farthest_points(points: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """(k, D): ``k`` of the rows of ``points`` (N, D), each the farthest from those chosen before
    (the first at random with ``seed``); the extremes of the set come first."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(points)))]
    dist = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    for _ in range(1, min(k, len(points))):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.sum((points - points[chosen[-1]]) ** 2, axis=1))
    return points[chosen].copy()


def _square_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (N, M): squared Euclidean distances between the rows of ``a`` (N, D) and ``b`` (M, D)
    (exactly 0 between a row and itself when ``b`` is ``a``)."""
    a, same = np.asarray(a, np.float64), b is a
    b = a if same else np.asarray(b, np.float64)
    d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T, 0.0)
    if same:
        np.fill_diagonal(d2, 0.0)
    return d2


def _nearest_scale(d2: np.ndarray) -> float:
    """The median over rows of the smallest off-diagonal entry of ``d2`` (N, N); 1 when there is none."""
    if len(d2) < 2:
        return 1.0
    off = d2 + np.diag(np.full(len(d2), np.inf))
    scale = float(np.median(off.min(1)))
    return scale if scale > 0 else 1.0


class MouthPath:
    """Chooses the bank mouth of each frame of a stream of meshes, ``LAG`` frames late.

    A frame's cost of mouth j is its lip-shape distance (``MouthBank.unary``); a change from mouth
    i to j between frames costs ``MouthBank.transition``. Frame t's mouth is the first step of the
    cheapest path (Viterbi) over frames t .. t + ``LAG`` that starts from frame t - 1's mouth, so
    each decision continues the last one (a fixed-lag decoder that forgot its own decisions could
    alternate between two paths of equal cost), and a live stream and a whole file choose alike.
    A lip shape held on a bank shape from the start shows that bank frame's own mouth (the path of
    zero cost). Memory stays bounded: the costs of the ``LAG`` + 1 frames not yet decided."""

    def __init__(self, bank: MouthBank, lag: int = LAG):
        self.bank, self.lag = bank, max(0, int(lag))
        self._unary: list[np.ndarray] = []  # (N,) costs of the frames not yet decided, oldest first
        self._last: int | None = None  # the mouth of the newest decided frame

    def push(self, vertices: np.ndarray, latent: np.ndarray | None = None) -> list[int]:
        """Add one frame's mesh (V, 3) and its audio code (D,) (see ``MouthBank.unary``); returns the
        mouths (bank indices) now decided, oldest first."""
        code = None if latent is None else np.asarray(latent, np.float32).reshape(1, -1)
        self._unary.append(self.bank.unary(np.asarray(vertices, np.float32)[None], code)[0])
        return self._decide(self.lag)

    def finish(self) -> list[int]:
        """The mouths of the frames not yet decided (the end of the stream)."""
        return self._decide(0)

    def _decide(self, keep: int) -> list[int]:
        out = []
        while len(self._unary) > keep:
            self._last = self._first_step()
            out.append(self._last)
            del self._unary[0]
        return out

    def _first_step(self) -> int:
        """The oldest undecided frame's mouth on the cheapest path through the undecided frames."""
        change = self.bank.transition
        cost = self._unary[0] + (change[self._last] if self._last is not None else 0.0)
        backs = []
        for unary in self._unary[1:]:
            total = cost[:, None] + change
            back = total.argmin(0)
            cost = total[back, np.arange(len(back))] + unary
            backs.append(back)
        j = int(cost.argmin())
        for back in reversed(backs):
            j = int(back[j])
        return j

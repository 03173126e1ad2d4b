"""The shipped mesh topology: MediaPipe's tessellation plus fills, consistent winding and mirror map."""
from __future__ import annotations

import numpy as np

from lipsync.topology import (INNER_LIP_LOWER, INNER_LIP_UPPER, NUM_VERTICES, load_topology,
                              mediapipe_connections_source, parse_tessellation, triangle_area_2d)


def test_tessellation_matches_the_installed_mediapipe():
    topo = load_topology()
    tris = parse_tessellation(mediapipe_connections_source())
    assert len(tris) == topo.n_tessellation == 852
    shipped = {frozenset(t) for t in topo.faces[:topo.n_tessellation].tolist()}
    assert shipped == {frozenset(t) for t in tris.tolist()}


def test_mouth_and_eye_fills_close_the_holes():
    topo = load_topology()
    assert len(topo.faces) == topo.n_tessellation + len(topo.mouth_faces) + len(topo.eye_faces)
    mouth_vertices = set(topo.faces[topo.mouth_faces].ravel().tolist())
    assert mouth_vertices == set(INNER_LIP_UPPER) | set(INNER_LIP_LOWER)
    # every inner-lip edge is now shared by exactly two triangles (no hole left at the mouth)
    edges = {}
    for f in topo.faces.tolist():
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            edges[frozenset((a, b))] = edges.get(frozenset((a, b)), 0) + 1
    for chain in (INNER_LIP_UPPER, INNER_LIP_LOWER):
        for a, b in zip(chain[:-1], chain[1:]):
            assert edges[frozenset((a, b))] == 2
    assert max(edges.values()) == 2, "the mesh is a manifold: no edge has more than two triangles"


def test_mirror_map_is_an_involution_that_maps_faces_to_faces():
    topo = load_topology()
    m = topo.mirror
    assert m.shape == (NUM_VERTICES,)
    assert (m[m] == np.arange(NUM_VERTICES)).all()
    assert 20 <= (m == np.arange(NUM_VERTICES)).sum() <= 40  # the midline
    mf = topo.mirror_faces()
    assert (mf[:topo.n_tessellation] >= 0).mean() > 0.97


def test_winding_is_front_facing_on_a_real_face(face_model):
    topo = face_model["topo"]
    area = triangle_area_2d(face_model["vertices"][:, :2].astype(np.float64), topo.faces[:topo.n_tessellation])
    assert (area > 0).mean() > 0.97


def test_regions_are_in_range_and_named():
    topo = load_topology()
    for name in ("lips_outer", "lips_inner", "left_eye", "right_eye", "left_brow", "right_brow", "face_oval", "stable"):
        idx = topo.regions[name]
        assert len(idx) and idx.min() >= 0 and idx.max() < NUM_VERTICES, name

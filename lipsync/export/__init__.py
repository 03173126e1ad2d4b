"""Export of talking-face animations to other tools.

* ``lipsync.export.gltf``: ``write_glb`` / ``read_glb``, a binary glTF 2.0 file with the textured mesh
  and the motion as PCA-compressed morph targets (Blender, three.js, Unity, model viewers).
* ``lipsync.export.blendshapes``: ARKit-named facial blendshapes built on the speaker's own shape,
  ``fit_blendshapes`` (per-frame weights in [0, 1]) and ``write_blendshapes_csv``.

The submodules are imported on demand; importing this package costs nothing.
"""

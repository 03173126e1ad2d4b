"""Renderers of the textured face mesh. ``reference`` is the slow, obvious one used to check the others."""

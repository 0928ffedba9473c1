"""Small, pure filter functions.

Every filter takes plain values and returns ``None`` when the input passes, or a short, stable
reason token (``"caption_too_short"``, ``"bad_aspect_ratio"`` ...) that ends up in the per-row index
and the manifest's drop counts.  Thresholds are arguments: they come from the build recipe.
"""

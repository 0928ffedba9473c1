"""The image store: every fetched row's processed image or drop, per input block, on any Beam filesystem."""

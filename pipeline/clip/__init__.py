"""CLIP: loading open_clip models (model), the CPU/GPU preprocessing split (preprocess) and the Beam
stages that score and embed (stage: ScoreWithClip, EmbedWithClip). Imports torch: import lazily.
"""

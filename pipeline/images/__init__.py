"""Decoding, checking, resizing and re-encoding downloaded images (process: ProcessImages) and the
perceptual hash every stage compares (perceptual).
"""

"""The embedded sample world of `make sample`, the tests and the benchmarks: the loopback fault web
(web), synthetic images (synthetic), the tiny CLIP (tiny_clip) and the bundled inputs (laion_data, mmc4_data).
"""

"""Downloading images: the HTTP fetcher with its address guard and retry policy (fetch) and the Beam
stage around it (stage: DownloadImages).
"""

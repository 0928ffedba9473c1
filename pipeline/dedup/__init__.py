"""Dedup: exact (sha256), near (pHash groups; the search is hamming_index) and semantic (SemDeDup
on CLIP embeddings).
"""

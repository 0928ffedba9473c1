"""The MMC4 path: reading jsonl documents (files), splitting and reassembling them (documents), the
image-to-sentence assignment (align), the realign command (realign) and the pipeline (pipeline: build_mmc4).
"""

"""What a build writes: webdataset shards (shard), the per-row index and shard list (index), manifest.json,
sizes.json and the summary (manifest), the registry of drop reasons (reasons), files written whole
(atomic); and what reads it back: the contract checker (verify) and one row's story (why).
"""

"""What a build writes: webdataset shards (shard), the per-row index and shard list (index), manifest.json,
sizes.json and the summary (manifest), and the contract checker (verify).
"""

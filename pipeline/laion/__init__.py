"""The LAION path: reading parquet rows (read), the metadata filters (metadata) and the pipeline that
chains the shared stages for image-text pairs (pipeline: build_laion).
"""

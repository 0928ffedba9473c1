"""Running the pipeline: runner option files (options), the local runner and its worker (local,
local_worker), and sizing a build (plan).
"""

"""The local runner's data plane in messages of about a megabyte, in both directions.

Between the FnApiRunner and its workers, a bundle's elements travel as gRPC messages (Beam's
data plane).  Two of Beam's choices made the processes of a local build grow with the rows:

- The runner sends a bundle its input as one message: ``BundleManager._send_input_to_worker``
  writes every chunk of the worker's share (a shuffle's groups, a PCollection kept between
  stages) into one stream and sends it when closed.  The runner holds the share several times
  over while it builds and sends that message (the stream, its bytes, the message), and the
  worker as many times while it receives it: in a 64,000-row build, the 22 MB of index rows a
  worker gets for the index stage raised its RSS by about 150 MB (benchmarks/store.py,
  ``memory``), and the shuffle buffer's megabyte chunks (runners/grouping.py) were sent as one.
  Here the stream is flushed whenever a megabyte is in it, between two of the chunks (each holds
  whole elements, as a message must); the worker's receive queue, five messages deep, paces it.
- A worker flushes its output to the runner every 10 MB, and the runner's receive queue holds five
  such messages per worker while the runner's one thread files them into the shuffle buffers.
  Here a worker flushes every megabyte.

The runner sends a bundle's input before it starts the bundle (Beam's order): with the input in
many messages, its send queue to the worker must take the whole share without blocking, or a
share larger than the queue's 100 MB would wait for a worker that has not been told to start.
The data channels made during a run (the runner's to each worker) are therefore given send
queues without a limit, as one message of the whole share had in effect (a queue always takes one
element, however large); a worker's receive queue still holds five messages.

Written here, not taken from Beam, because Beam has no option for either size.  ``installed()``
puts the runner's half in place for one run (``LocalFnApiRunner``, runners/local.py) and Beam's
back after; ``install_in_worker()`` puts the worker's half in place for the life of a worker
process (runners/local_worker.py).
"""

from __future__ import annotations

from apache_beam.runners.worker import data_plane

from .patching import ScopedPatch

__all__ = ["CHUNK_BYTES", "install_in_worker", "installed"]

CHUNK_BYTES = 1 << 20

_BEAMS_CREATE = data_plane.ClosableOutputStream.create


def _send_input_in_chunks(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """``BundleManager._send_input_to_worker``, flushing the stream every ``CHUNK_BYTES``."""
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)
    for byte_stream in byte_streams or []:
        data_out.write(byte_stream)
        if data_out.size() >= CHUNK_BYTES:
            data_out.flush()
    data_out.close()


def _create_stream(close_callback, flush_callback, data_buffer_time_limit_ms):
    """``ClosableOutputStream.create``, its size-flushed streams flushed every ``CHUNK_BYTES``."""
    if data_buffer_time_limit_ms > 0:
        return _BEAMS_CREATE(close_callback, flush_callback, data_buffer_time_limit_ms)
    return data_plane.SizeBasedBufferingClosableOutputStream(
        close_callback, flush_callback=flush_callback, size_flush_threshold=CHUNK_BYTES
    )


def install_in_worker() -> None:
    """A worker's output streams flushed every ``CHUNK_BYTES`` (for the life of the process)."""
    data_plane.ClosableOutputStream.create = staticmethod(_create_stream)  # type: ignore[method-assign]


def _beams_sending() -> tuple:
    """Beam's send method and queue limits (to put back)."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # not in a worker: the runner's

    return (
        fn_runner.BundleManager._send_input_to_worker,
        data_plane._DEFAULT_SEND_QUEUE_MAX_ELEMENTS,
        data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES,
    )


def _send_in_chunks() -> None:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    fn_runner.BundleManager._send_input_to_worker = _send_input_in_chunks  # type: ignore[method-assign]
    # read by every data channel made from now on (Beam 2.77: _GrpcDataChannel.__init__); 0: no limit
    data_plane._DEFAULT_SEND_QUEUE_MAX_ELEMENTS = data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES = 0


def _put_back(beams: tuple) -> None:
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    (
        fn_runner.BundleManager._send_input_to_worker,  # type: ignore[method-assign]
        data_plane._DEFAULT_SEND_QUEUE_MAX_ELEMENTS,
        data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES,
    ) = beams


# Within ``installed()``, the FnApiRunner sends a bundle's input in messages of about
# ``CHUNK_BYTES`` (nested and concurrent runs share the swap; Beam's method is back once the last
# one ends).
installed = ScopedPatch(_beams_sending, _send_in_chunks, _put_back)

"""A local GCS emulator with object generations: `gcp-storage-emulator` plus what TensorStore needs.

The package serves the JSON API but ignores generation preconditions and sends no
`x-goog-generation` header with an object's bytes. Real GCS does both, and TensorStore (Orbax's
arrays) relies on them: it reads an object's generation from that header and writes OCDBT
manifests with `ifGenerationMatch`, so against the bare package its conditional writes fail
("Malformed StorageGeneration"). This module wraps the package's object handlers so that, as
GCS documents (cloud.google.com/storage/docs/request-preconditions):
- `ifGenerationMatch` / `ifMetagenerationMatch` that do not hold answer 412 Precondition Failed
  (generation 0 means "no live object");
- `ifGenerationNotMatch` / `ifMetagenerationNotMatch` that do not hold answer 304 Not Modified
  on reads and 412 on writes;
- reads carry `x-goog-generation` and `x-goog-metageneration`.
The package serves one request at a time (http.server.HTTPServer), so a check and the write it
guards cannot interleave with another request. Its listen backlog is raised from 5: TensorStore
opens dozens of connections at once, and those the kernel drops wait for a SYN retransmit
(1 s, 3 s, 7 s, ...).

`serve(bucket, log)` runs it as its own process for a test (conftest's `gcs_bucket` fixture);
as a script: `python tests/gcs_emulator.py --port PORT --bucket NAME`.
"""
from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import socket
import subprocess
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_READS = (objects.get, objects.download)
_WRITES = (objects.insert, objects.xml_upload, objects.delete, objects.patch)


def _object_id(request) -> str | None:
  if request.params.get("object_id"):
    return request.params["object_id"]
  names = request.query.get("name")
  return names[0] if names else None


def _live(storage, bucket: str, object_id: str | None) -> tuple[int, int]:
  """(generation, metageneration) of the live object; (0, 0) when there is none."""
  if object_id is None:
    return 0, 0
  try:
    meta = storage.get_file_obj(bucket, object_id)
  except NotFound:
    return 0, 0
  return int(meta["generation"]), int(meta["metageneration"])


def _query_int(request, key: str) -> int | None:
  values = request.query.get(key)
  return int(values[0]) if values else None


def _failed_precondition(request, live: tuple[int, int], is_read: bool) -> HTTPStatus | None:
  generation, metageneration = live
  for key, current, must_equal in (
      ("ifGenerationMatch", generation, True), ("ifMetagenerationMatch", metageneration, True),
      ("ifGenerationNotMatch", generation, False),
      ("ifMetagenerationNotMatch", metageneration, False)):
    want = _query_int(request, key)
    if want is None or (want == current) == must_equal:
      continue
    if not must_equal and is_read:
      return HTTPStatus.NOT_MODIFIED
    return HTTPStatus.PRECONDITION_FAILED
  return None


def _with_generations(handler, is_read: bool):
  def handle(request, response, storage, *args, **kwargs):
    bucket = request.params.get("bucket_name")
    live = _live(storage, bucket, _object_id(request))
    status = _failed_precondition(request, live, is_read)
    if status is not None:
      response.status = status
      if status == HTTPStatus.PRECONDITION_FAILED:
        response.json({"error": {"code": 412, "message": "Precondition Failed",
                                 "errors": [{"reason": "conditionNotMet"}]}})
      return None
    result = handler(request, response, storage, *args, **kwargs)
    if is_read and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT) and live[0]:
      response["x-goog-generation"] = str(live[0])
      response["x-goog-metageneration"] = str(live[1])
    return result
  handle.__name__ = handler.__name__
  return handle


class _HTTPServer(http.server.HTTPServer):
  request_queue_size = 1024


def install() -> None:
  """Wrap the object handlers in every route of the package's table (once per process)."""
  # The package calls http.server.HTTPServer by module attribute; this process is the emulator only.
  http.server.HTTPServer = _HTTPServer
  wrapped = {h: _with_generations(h, True) for h in _READS}
  wrapped.update({h: _with_generations(h, False) for h in _WRITES})
  for _, methods in server.HANDLERS:
    for method, handler in methods.items():
      methods[method] = wrapped.get(handler, handler)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve(bucket: str, log_path):
  """Run the emulator with `bucket` in a child process; yields the environment that points gcsfs
  (STORAGE_EMULATOR_HOST) and TensorStore (TENSORSTORE_GCS_HTTP_URL) at it."""
  port = _free_port()
  with open(log_path, "wb") as log:
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--bucket", bucket],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + 60
      while True:
        try:
          socket.create_connection(("127.0.0.1", port), timeout=1).close()
          break
        except OSError:
          if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the GCS emulator did not start; see {log_path}") from None
          time.sleep(0.1)
      url = f"http://127.0.0.1:{port}"
      yield dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                 GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator")
    finally:
      proc.terminate()
      proc.wait(30)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True, help="a bucket created at start")
  args = parser.parse_args()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
  install()
  emulator = server.create_server(args.host, args.port, in_memory=True,
                                  default_bucket=args.bucket)
  emulator.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    emulator.stop()


if __name__ == "__main__":
  main()

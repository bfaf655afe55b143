"""Files at URLs (gs://, s3://, any fsspec protocol) beside local paths.

On a TPU pod the corpus, the built datasets and the checkpoints live in a bucket. Checkpoints
go through Orbax (etils.epath for files, tensorstore for arrays); everything the data package
reads or writes goes through here: fsspec for URLs (gcsfs for gs://, installed with the `gcs`
extra), the local filesystem for everything else.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from typing import Any


def is_url(path) -> bool:
  return "://" in str(path)


def _fs(url: str):
  import fsspec
  try:
    return fsspec.core.url_to_fs(url)
  except ImportError as e:  # e.g. gcsfs missing for gs://
    raise ImportError(f"{url}: reading this URL needs an fsspec filesystem that is not installed "
                      f"({e}); for gs:// pip install 'medmoe_jax[gcs]'") from None


def _url(fs, path: str) -> str:
  return fs.unstrip_protocol(path)


def open_binary(path: str):
  """A binary file object for reading a local path or a URL; `.gz` decompressed."""
  if is_url(path):
    fs, p = _fs(path)
    f = fs.open(p, "rb")
  else:
    f = open(path, "rb")
  return gzip.GzipFile(fileobj=f, mode="rb") if path.endswith(".gz") else f


def glob(pattern: str) -> list[str]:
  """Sorted URLs matching a URL glob."""
  fs, p = _fs(pattern)
  return sorted(_url(fs, x) for x in fs.glob(p) if fs.isfile(x))


def isfile(path: str) -> bool:
  if not is_url(path):
    return os.path.isfile(path)
  fs, p = _fs(path)
  return fs.isfile(p)


def exists(path: str) -> bool:
  if not is_url(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return fs.exists(p)


def file_key(path: str) -> list[Any]:
  """What identifies a file's content without reading it: its path, size and version (local:
  mtime; a bucket: the object's generation or etag, which change with every write)."""
  if not is_url(path):
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
  fs, p = _fs(path)
  info = fs.info(p)
  keys = ("generation", "etag", "ETag", "mtime", "updated", "created")
  version = next((str(info[k]) for k in keys if info.get(k)), "")
  return [path, int(info.get("size") or 0), version]


def read_text(path: str) -> str:
  if not is_url(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  fs, p = _fs(path)
  return fs.cat_file(p).decode("utf-8")


def write_text(path: str, text: str) -> None:
  """A URL: one object upload (atomic: readers see the old object or the new one)."""
  fs, p = _fs(path)
  fs.pipe_file(p, text.encode("utf-8"))


def join(base: str, *parts: str) -> str:
  if not is_url(base):
    return os.path.join(base, *parts)
  return "/".join([base.rstrip("/"), *parts])


def upload_dir(local: str, url: str, *, last: str | None = None) -> None:
  """Copy the files under `local` to `url` (same relative names); `last` (a relative name) is
  copied after all others: written last, it marks the copy complete."""
  fs, root = _fs(url)
  names = sorted(os.path.relpath(os.path.join(d, f), local)
                 for d, _, files in os.walk(local) for f in files)
  if last in names:
    names.remove(last)
    names.append(last)
  for name in names:
    fs.put_file(os.path.join(local, name), f"{root.rstrip('/')}/{name}")


def remove_tree(url: str) -> None:
  fs, p = _fs(url)
  fs.rm(p, recursive=True)


def download_dir(url: str, local: str) -> None:
  """Copy every file under `url` into `local` (same relative names)."""
  fs, root = _fs(url)
  root = root.rstrip("/")
  for p in fs.find(root):
    rel = p[len(root):].lstrip("/")
    dest = os.path.join(local, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fs.get_file(p, dest)


def cache_dir(url: str, kind: str = "data") -> str:
  """The local directory that mirrors `url` (ArrayRecord's reader reads local files only):
  $MEDMOE_JAX_CACHE or ~/.cache/medmoe_jax, then `kind`, then a directory named after the URL."""
  root = os.environ.get("MEDMOE_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "medmoe_jax")
  tag = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
  return os.path.join(root, kind, tag)


def local_path(path: str, kind: str, names: tuple[str, ...]) -> str:
  """`path` itself (with `~` expanded) when it is local, else `local_copy(path, kind, names)`."""
  if not is_url(path):
    return os.path.expanduser(path)
  return local_copy(path, kind, names)


def local_copy(url: str, kind: str, names: tuple[str, ...]) -> str:
  """A local path for small files at a URL, copied afresh into cache_dir(url, kind): the file
  itself when `url` is one (returns its local path), else those of `names` that exist in the
  directory `url` (returns the local directory; nothing else there is read, e.g. a model
  directory's weights). Each file is written whole and renamed into place, so processes sharing
  a machine may copy at once. FileNotFoundError when nothing is there."""
  fs, p = _fs(url)
  local = cache_dir(url, kind)
  os.makedirs(local, exist_ok=True)
  if fs.isfile(p):
    name = os.path.basename(p.rstrip("/"))
    _get_whole(fs, p, os.path.join(local, name))
    return os.path.join(local, name)
  root = p.rstrip("/")
  present = [n for n in names if fs.isfile(f"{root}/{n}")]
  if not present:
    raise FileNotFoundError(f"{url}: no such file, and no directory holding any of "
                            f"{', '.join(names)}")
  for name in present:
    _get_whole(fs, f"{root}/{name}", os.path.join(local, name))
  return local


def _get_whole(fs, remote: str, dest: str) -> None:
  tmp = f"{dest}.tmp.{os.getpid()}"
  fs.get_file(remote, tmp)
  os.replace(tmp, dest)  # readers see the old file or the whole new one

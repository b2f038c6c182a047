"""The one generic FFCV writer used by every dataset.

A sample is ``(image, label, index)``: ``image`` an (H, W, 3) uint8 RGB array (or PIL image),
``label`` an int (-1 for unlabeled data), ``index`` the sample's position 0..N-1 in its split;
the fields are ``mpcl.data.betons.FIELDS``, the schema mpcl's readers check.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import queue
import sys
from multiprocessing import Process, Queue, Value
from pathlib import Path
from time import sleep


from mpcl.data.betons import FIELDS
from mpcl.data.process import available_cpus
from mpcl.files import STORAGE_ERRORS

MIN_PAGE_SIZE = 8 << 20  # ffcv's default (4 x 2 MiB)


class WriteError(RuntimeError):
    """Writing a .beton failed (a writer worker died); the partial file is not kept."""


def page_size_for(max_sample_bytes: int) -> int:
    """A power of two holding the largest sample (ffcv cannot split one over pages)."""
    size = MIN_PAGE_SIZE
    while size < 2 * max_sample_bytes + (1 << 20):
        size *= 2
    if size >= 1 << 32:
        raise ValueError(f"a {max_sample_bytes}-byte image is too large for an ffcv page; "
                         "lower max_resolution")
    return size


def show_progress() -> bool:
    """Progress bars on a terminal only (quiet in CI and logs)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def write_beton(path: str | os.PathLike, dataset, *, write_mode: str = "raw",
                max_resolution: int | None = None, jpeg_quality: int = 90,
                workers: int = 1, max_sample_bytes: int = 0, desc: str | None = None,
                shown_as: str | os.PathLike | None = None) -> int:
    """Write ``dataset`` (``len()`` and ``[i] -> (image, label, index)``) to ``path``.

    ``workers`` processes encode (clamped to the CPUs this process may use). Returns the
    number of samples written. Raises :class:`WriteError` if a worker dies (ffcv 1.0.2 itself
    would wait forever), naming ``shown_as`` (default ``path``: the file the user asked for
    when ``path`` is a temporary one) and the storage's cause when a worker's write failed
    (a full disk); the caller deletes the partial file.
    """
    from ffcv.fields import IntField, RGBImageField

    make = {"RGBImageField": lambda: RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                                   jpeg_quality=jpeg_quality),
            "IntField": IntField}
    fields = {name: make[kind]() for name, kind in FIELDS.items()}
    writer = _writer_class()(str(path), fields, page_size=page_size_for(max_sample_bytes),
                     num_workers=max(1, min(int(workers), available_cpus())))
    writer.desc = desc or Path(path).name
    writer.shown_as = str(shown_as or path)
    writer.from_indexed_dataset(dataset, chunksize=256)
    return len(dataset)


@functools.cache
def _writer_class():
    """ffcv's DatasetWriter with :class:`_WatchedWorkers`; built on first use, because importing
    ffcv (numba, cv2) takes seconds."""
    from ffcv.writer import DatasetWriter

    return type("Writer", (_WatchedWorkers, DatasetWriter), {})


class _WatchedWorkers:
    """ffcv 1.0.2's ``DatasetWriter._write_common`` with two changes: a dead worker raises
    :class:`WriteError` instead of hanging the progress loop, and the progress bar only shows
    on a terminal. The steps are ffcv's, in ffcv's order."""

    desc = None

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        processes = []
        self.workqueue = None
        try:
            done_number, allocations_queue = self._start_workers(processes, queue_content, work_fn,
                                                                 extra_worker_args)
            self._follow_progress(processes, done_number)
            allocations = self._collect_allocations(processes, allocations_queue)
            for p in processes:
                p.join()
            self.finalize(allocations)
        finally:
            for p in processes:
                if p.is_alive():
                    p.terminate()
                    p.join()
            # work the dead workers left in the queue would block this process's exit (its
            # feeder thread waits to flush into a pipe nobody reads)
            if self.workqueue is not None:
                self.workqueue.cancel_join_thread()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _start_workers(self, processes, queue_content, work_fn, extra_worker_args):
        """Queue the work, start ``num_workers`` processes (appended to ``processes``); returns
        the shared done counter and the queue the workers hand their allocations back on."""
        from ffcv.memory_allocator import MemoryAllocator

        workqueue = self.workqueue = Queue()
        for todo in queue_content:
            workqueue.put(todo)
        allocations_queue = Queue()
        for _ in range(self.num_workers):
            workqueue.put(None)
        done_number = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields,
                       allocator, done_number, allocations_queue, *extra_worker_args)
        self.worker_errno = Value(ctypes.c_int, 0)
        processes += [Process(target=_noting_errno, args=(self.worker_errno, work_fn, *worker_args), daemon=True)
                      for _ in range(self.num_workers)]
        for p in processes:
            p.start()
        return done_number, allocations_queue

    def _follow_progress(self, processes, done_number) -> None:
        """Wait until every sample is written, checking that no worker died."""
        from tqdm import tqdm

        with tqdm(total=self.num_samples, desc=self.desc, disable=not show_progress(),
                  unit="img") as progress:
            previous = 0
            while previous != self.num_samples:
                self._check_workers(processes, previous)
                value = done_number.value
                progress.update(value - previous)
                previous = value
                if previous != self.num_samples:
                    sleep(0.05)

    def _collect_allocations(self, processes, allocations_queue) -> list:
        """Every worker's page allocations, checking for dead workers while waiting."""
        allocations = []
        for _ in processes:
            while True:
                try:
                    allocations.extend(allocations_queue.get(timeout=1.0))
                    break
                except queue.Empty:  # is someone dead?
                    self._check_workers(processes, self.num_samples)
        return allocations

    def _check_workers(self, processes, done):
        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
        if not dead:
            return
        code = self.worker_errno.value
        if code in STORAGE_ERRORS:
            raise WriteError(f"{self.shown_as}: {STORAGE_ERRORS[code]} (a writer worker stopped after "
                             f"{done} of {self.num_samples} samples)")
        raise WriteError(f"{self.shown_as}: a writer worker died (exit code {dead[0]}) "
                         f"after {done} of {self.num_samples} samples; its traceback "
                         "is above")


def _noting_errno(errno_seen, work_fn, *args) -> None:
    """A writer worker: ffcv's ``work_fn``, with the errno of a failed write (ENOSPC on a full
    disk) left in ``errno_seen`` for the parent's message."""
    try:
        work_fn(*args)
    except OSError as e:
        errno_seen.value = e.errno or 0
        if e.errno in STORAGE_ERRORS:   # the parent says it in one line: no traceback
            sys.exit(1)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

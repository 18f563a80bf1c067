"""The flash tier: one LMDB environment, one write transaction per batch.

Each value is a ``record`` (header + payload) whose checksum is verified on every read; a
record that fails is deleted and reported as a miss, never served. LMDB is copy-on-write,
so a crash (even SIGKILL mid-transaction) leaves the last committed state intact. By
default commits are not fsync'd (fast; a process crash loses nothing that reached the OS);
``sync=True`` makes every acknowledged batch survive power loss too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import lmdb

from tiers import parallel, record
from tiers.base import Block, PayloadSizeError, StoredBlock, Tier, TierFull, TierWriteError

log = logging.getLogger(__name__)

PAGE = 4096
MAX_PAYLOAD = 1 << 31


class FlashTier(Tier):
    persistent = True

    def __init__(
        self,
        path: str,
        capacity_bytes: int,
        sync: bool = False,
        map_size: int | None = None,
        max_map_size: int | None = None,
    ):
        if capacity_bytes <= 0:
            raise ValueError(f"flash capacity must be positive, got {capacity_bytes}")
        os.makedirs(path, exist_ok=True)
        self.name = "flash"
        self.path = path
        self.capacity_bytes = capacity_bytes
        self.sync = sync
        # The store's byte count enforces the capacity; the map needs headroom over it for
        # B-tree pages and pages LMDB cannot reuse yet. It grows on demand up to
        # ``max_map_size`` for puts (past that the store evicts), and always for deletes,
        # which need a few fresh pages too (copy-on-write) and only ever shrink the data.
        self.map_size = map_size or capacity_bytes + capacity_bytes // 4 + (32 << 20)
        self.max_map_size = max(self.map_size, max_map_size or 2 * capacity_bytes + (64 << 20))
        self._env = lmdb.open(path, map_size=self.map_size, subdir=True, sync=sync,
                              metasync=sync, readahead=False, max_readers=256, lock=True)
        self.corrupt_reads = 0

    def footprint(self, size: int) -> int:
        if not 0 < size <= MAX_PAYLOAD:
            raise PayloadSizeError(f"flash: payload of {size} B (must be 1 B to 2 GiB)")
        # A large value takes whole overflow pages (16 B page header), plus its leaf entry.
        return -(-(size + record.HEADER_SIZE + 16) // PAGE) * PAGE + 64

    def contains(self, key: bytes) -> bool:
        with self._env.begin(buffers=True) as txn:
            return txn.get(key) is not None

    def get(self, key: bytes) -> bytes | None:
        out: list[bytes | None] = []
        self._read_batch([key], lambda raw, _: out.append(bytes(record.payload_of(raw))))
        return out[0] if out else None

    def read_into(self, key: bytes, out: memoryview) -> int:
        return self.read_many_into([key], [out])[0]

    def read_many_into(self, keys: list[bytes], dests: list[memoryview]) -> list[int]:
        sizes = [-1] * len(keys)

        def copy(raw, i: int) -> None:
            # Verify, then copy: the hash pulls the payload into cache for the copy.
            payload = record.payload_of(raw)
            parallel.copy(dests[i], payload)
            sizes[i] = payload.nbytes

        self._read_batch(keys, copy)
        return sizes

    def _read_batch(self, keys: list[bytes], take) -> None:
        """``take(raw record view, i)`` for each present key, in one read transaction (the
        views are valid only inside it), a large batch over several threads
        (``tiers.parallel``). Records that fail verification are deleted afterwards and
        skipped: a corrupt block is a miss, never served."""

        def verified(found: tuple[int, bytes, memoryview]) -> bytes | None:
            i, key, raw = found
            try:
                take(raw, i)
            except record.CorruptRecord as e:
                log.warning("flash: block %s failed verification (%s); deleted", key.hex(), e)
                return key
            return None

        with self._env.begin(buffers=True) as txn:
            found = [(i, key, raw) for i, key in enumerate(keys) if (raw := txn.get(key)) is not None]
            nbytes = sum(len(raw) for _, _, raw in found)
            bad = [key for key in parallel.each(verified, found, nbytes) if key is not None]
        if bad:
            self.corrupt_reads += len(bad)
            self.delete_many(bad)

    def put_many(self, blocks: list[Block]) -> None:
        """One write transaction for the whole batch: all of it lands or none."""
        if blocks:
            self._transact(lambda txn: [txn.put(b.key, record.encode(b.parent, b.depth, b.payload))
                                        for b in blocks], may_exceed_max=False)

    def delete_many(self, keys: list[bytes]) -> None:
        if keys:
            self._transact(lambda txn: [txn.delete(k) for k in keys], may_exceed_max=True)

    def _transact(self, body, may_exceed_max: bool) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError as e:
                if not self._grow(may_exceed_max):
                    raise TierFull(f"flash: LMDB map is full at its maximum of "
                                   f"{self.max_map_size} B") from e
            except lmdb.Error as e:
                raise TierWriteError(f"flash: write to {self.path} failed: {e}") from e

    def _grow(self, may_exceed_max: bool) -> bool:
        new = self.map_size + self.map_size // 4 + (1 << 20)
        if not may_exceed_max:
            if self.map_size >= self.max_map_size:
                return False
            new = min(new, self.max_map_size)
        log.info("flash: growing the LMDB map from %d to %d B", self.map_size, new)
        self._env.set_mapsize(new)
        self.map_size = new
        return True

    def scan(self) -> Iterator[StoredBlock]:
        """Every readable header; records too damaged to parse are deleted."""
        bad = []
        with self._env.begin(buffers=True) as txn:
            for key, raw in txn.cursor():
                try:
                    parent, depth, length, _ = record.decode_header(raw)
                except record.CorruptRecord:
                    bad.append(bytes(key))
                    continue
                yield StoredBlock(bytes(key), parent, depth, length)
        if bad:
            self.corrupt_reads += len(bad)
            log.warning("flash: %d unreadable records deleted at start", len(bad))
            self.delete_many(bad)

    def flush(self) -> None:
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, "map_size": self.map_size,
                "max_map_size": self.max_map_size, "sync": self.sync}

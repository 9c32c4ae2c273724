"""A spooled payload is handed over as a read-only mapping of its file; the fold reads it a block
at a time and gives each block's pages back, so an update is never resident whole."""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import numpy as np
import pytest

from ml.strategies.fedavg import RunningAverage, template_of
from schema.envelope import MAX_CHUNK_BYTES
from streams.codec import CodecError, bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.framing import Payload, Reassembler, split
from streams.pages import FilePages

MiB = 1024 * 1024


def reassembled(data: bytes, spool_over_bytes: int) -> Payload:
    reassembler = Reassembler(spool_over_bytes=spool_over_bytes)
    frames = split(payload=data, chunk_size=MAX_CHUNK_BYTES, task_id="t", round=1, kind="update",
                   sender="alice")
    out = [p for env, chunk in frames if (p := reassembler.add(env, bytes(chunk))) is not None]
    assert len(out) == 1
    return out[0]


def weights(rng: np.random.Generator, sizes: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.standard_normal(size).astype(np.float32) for size in sizes]


def rss_file_kib() -> int:
    """Resident pages of file mappings (the spool file's, once read), in KiB."""
    found = re.search(r"^RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if found is None:
        pytest.skip("no RssFile in /proc/self/status on this system")
    return int(found.group(1))


def test_a_spooled_payload_is_a_read_only_mapping_whose_arrays_are_views_of_it() -> None:
    sent = weights(np.random.default_rng(1), (3000, 7, 1))
    data = encode_bundle(keras_weights_to_bundle(sent, {"samples": 5}))

    spooled = reassembled(data, spool_over_bytes=1000)
    in_memory = reassembled(data, spool_over_bytes=10 * MiB)

    assert isinstance(spooled.data, mmap.mmap) and isinstance(in_memory.data, bytes)
    assert bytes(spooled.data) == data == in_memory.data
    with pytest.raises(TypeError):
        spooled.data[0] = 1  # nothing can change the bytes the arrays view
    got = bundle_to_weights(decode_bundle(spooled.data))
    assert all(np.array_equal(a, b) and not a.flags.writeable for a, b in zip(got, sent, strict=True))
    assert FilePages.of(got[0].reshape(-1)) is not None
    assert FilePages.of(bundle_to_weights(decode_bundle(in_memory.data))[0].reshape(-1)) is None


def test_folding_an_update_from_its_mapping_leaves_none_of_it_resident_and_sums_the_same() -> None:
    """32 MiB of weights folded from the spool file's mapping add (almost) nothing to resident
    memory, where reading them all at once maps all 32 MiB; the sums are bit for bit those of
    the same update folded from bytes."""
    rng = np.random.default_rng(2)
    sent = weights(rng, (6 * MiB, 2 * MiB - 3, 3))
    data = encode_bundle(keras_weights_to_bundle(sent))
    from_file = bundle_to_weights(decode_bundle(reassembled(data, spool_over_bytes=MiB).data))
    from_bytes = bundle_to_weights(decode_bundle(data))
    by_file, by_bytes = RunningAverage(template_of(sent)), RunningAverage(template_of(sent))

    before = rss_file_kib()
    by_file.add(from_file, 7)  # checks every value is finite, then folds: two passes
    folded = rss_file_kib() - before
    touched = [float(np.asarray(w, dtype=np.float64).sum()) for w in from_file]
    read_whole = rss_file_kib() - before
    by_bytes.add(from_bytes, 7)

    assert folded < 4 * 1024, f"folding left {folded} KiB of the update resident"
    assert read_whole > 24 * 1024, f"reading the arrays whole mapped only {read_whole} KiB"
    assert all(np.isfinite(touched))
    assert all(np.array_equal(a, b) for a, b in zip(by_file.result(), by_bytes.result(), strict=True))


def test_release_gives_back_whole_pages_around_the_range_and_never_past_the_mapping() -> None:
    rng = np.random.default_rng(3)
    sent = weights(rng, (MiB + 5,))
    array = bundle_to_weights(decode_bundle(reassembled(encode_bundle(keras_weights_to_bundle(sent)),
                                                        spool_over_bytes=1000).data))[0]
    pages = FilePages.of(array.reshape(-1))
    assert pages is not None

    float(np.asarray(array, dtype=np.float64).sum())
    pages.release(0, array.size)  # the last page is partly past the array: clipped, no error
    pages.release(10, 11)

    assert np.array_equal(array, sent[0])  # read back from the file after its pages were given back


def test_a_spooled_payload_that_is_not_a_bundle_is_refused_by_name_and_the_next_one_decodes() -> None:
    """Garbage with a matching sha256 (a member's own bytes) reaches the decoder as a mapping: it
    gets a CodecError naming what is wrong, and a good payload after it decodes as before."""
    garbage = reassembled(b"NOT A BUNDLE" + bytes(50_000), spool_over_bytes=1000)
    sent = weights(np.random.default_rng(4), (4000,))
    good = reassembled(encode_bundle(keras_weights_to_bundle(sent)), spool_over_bytes=1000)

    assert isinstance(garbage.data, mmap.mmap)
    with pytest.raises(CodecError, match="bad magic"):
        decode_bundle(garbage.data)
    assert np.array_equal(bundle_to_weights(decode_bundle(good.data))[0], sent[0])

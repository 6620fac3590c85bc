"""LAION-FACE image-text shards (img2dataset webdataset tars) → training batches, resumable exactly.

Each sample in a shard is ``KEY.jpg`` (or ``png``/``jpeg``/``webp``), ``KEY.txt`` (caption) and
``KEY.json`` (img2dataset metadata, not needed for training). Read with the ``webdataset`` library:
``wds.ResampledShards`` draws shards with replacement, so every rank and every DataLoader worker
reads its own endless stream (per-rank / per-worker splitting without ``split_by_node``);
``url_opener`` → ``tar_file_expander`` → ``group_by_keys`` turn a shard into samples. Bad samples
(unreadable image, missing caption, damaged tar member) go to a handler that logs them the
``warn_and_continue`` way, counts them and skips them.

Exact resume. A stream is identified by (seed, rank, stream id); stream id = DataLoader worker
(0 without workers). Everything random in a stream is a pure function of that identity:

- the shard sequence: ``ResampledShards`` seeded from (seed, rank, stream) — deterministic mode;
- the sample order inside the i-th shard: a buffer shuffle seeded from (seed, rank, stream, i);
- the crop of a sample: seeded from (seed, rank, stream, i, position in the shuffled shard).

Each batch carries the position just after its last sample (shard index i, offset in the shuffled
shard) and the stream's bad-sample count. The training loop records the positions of the batches
it *consumed* (prefetched batches do not count) and which stream comes next (the DataLoader takes
batches from its workers round-robin). Resuming regenerates each stream from its position: the
shard sequence is skipped by index without opening files, and at most one shard is re-read (raw,
undecoded) to reach the offset. Batches after a resume are therefore identical to those an
uninterrupted run would have produced, provided world size and worker count are unchanged.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
import warnings
from itertools import islice
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from farl_edge.errors import UserError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_EMPTY_SHARDS = 100  # consecutive shards without one good sample → the data is unusable


def stable_seed(*parts) -> int:
    """63-bit seed from ints/strings, the same in every process (unlike ``hash`` of a str)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BadSampleCounter:
    """webdataset exception handler: count, warn (first ``log_first``, then every ``log_every``), skip.

    ``webdataset.warn_and_continue`` itself sleeps 0.5 s per call, which would throttle a worker on
    web-crawled data; this handler warns the same way without the sleep.
    """

    def __init__(self, count: int = 0, log_first: int = 10, log_every: int = 1000, where: str = ""):
        self.count, self.log_first, self.log_every, self.where = count, log_first, log_every, where
        self._seen = 0

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        self._seen += 1
        if self._seen <= self.log_first or self._seen % self.log_every == 0:
            warnings.warn(f"skipping bad sample{self.where} (#{self.count}): {exn!r}", stacklevel=2)
        return True  # continue


class BadSample(ValueError):
    pass


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.9, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling: (left, top, crop width, crop height)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    # Fallback: central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def decode_image(data: bytes, size: int, rng: random.Random, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Image bytes → RGB → random resized crop to ``size`` → float tensor (3, size, size) in [0, 1]."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        # Decode at a reduced scale when the crop will be downsized anyway (keeps >= the needed pixels).
        need = int(math.ceil(size / math.sqrt(max(scale[0], 1e-3))))
        img.draft("RGB", (need, need))
    img = img.convert("RGB")
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng, scale, ratio)
    img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _buffer_shuffle(samples, bufsize: int, rng: random.Random):
    """Deterministic buffer shuffle (webdataset's ``shuffle`` with an explicit RNG)."""
    if bufsize <= 1:
        yield from samples
        return
    buf = []
    for sample in samples:
        buf.append(sample)
        if len(buf) >= bufsize:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def shard_samples(url: str, handler) -> Iterator[dict]:
    """Raw samples (dicts of bytes by extension) of one shard, with webdataset's tar readers."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    files = tar_file_expander(url_opener([dict(url=url)], handler=handler), handler=handler)
    return group_by_keys(files, handler=handler)


class LaionFaceShards(IterableDataset):
    """Endless batches ``{"image": (B,3,S,S) in [0,1], "text": (B,77) ids, ...}`` from resampled shards.

    ``positions``: per stream ``{"shard", "offset", "bad"}`` to resume from; ``stream_offset``: the
    stream that DataLoader worker 0 serves (the next stream the training loop expects); ``generation``:
    mixed into every seed — bump it to get fresh streams (e.g. after changing the worker count).
    """

    def __init__(self, urls, image_size: int, batch_size: int, *, seed: int = 0, rank: int = 0, num_streams: int = 1,
                 shuffle_buffer: int = 1000, crop_scale=(0.9, 1.0), crop_ratio=(3 / 4, 4 / 3), context_length: int = 77,
                 positions: list[dict] | None = None, stream_offset: int = 0, generation: int = 0,
                 log_first_bad: int = 10, require_text: bool = True):
        super().__init__()
        import webdataset as wds

        # brace notation and '::'-joined lists expand as in webdataset; a list may hold patterns too
        patterns = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [u for pattern in patterns for u in wds.shardlists.expand_urls(str(pattern))]
        if not self.urls:
            raise UserError(f"no shards in {urls!r}")
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.seed, self.rank, self.num_streams, self.generation = int(seed), int(rank), int(num_streams), int(generation)
        self.shuffle_buffer, self.context_length = int(shuffle_buffer), int(context_length)
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.positions = list(positions) if positions else [None] * self.num_streams
        if len(self.positions) != self.num_streams:
            raise UserError(f"{len(self.positions)} stream positions for {self.num_streams} streams")
        self.stream_offset = int(stream_offset) % self.num_streams
        self.log_first_bad = log_first_bad
        # False: a sample without caption is an image for masked image modelling only (has_text False)
        self.require_text = bool(require_text)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_streams:
            raise RuntimeError(f"dataset built for {self.num_streams} streams but read by {workers} DataLoader workers")
        yield from self.stream_batches((self.stream_offset + worker) % self.num_streams)

    def _seed(self, *parts) -> int:
        return stable_seed(self.seed, self.generation, self.rank, *parts)

    def raw_stream(self, stream: int, start: dict | None = None, counter: BadSampleCounter | None = None):
        """(shard index, offset in shuffled shard, raw sample) from ``start`` on."""
        import webdataset as wds

        start = start or {}
        first_shard, first_offset = int(start.get("shard", 0)), int(start.get("offset", 0))
        counter = counter or BadSampleCounter()
        stream_seed = self._seed("shards", stream)
        shards = wds.ResampledShards(self.urls, seed=0, deterministic=True, worker_seed=lambda: stream_seed)
        empty = 0  # consecutive shards without a single raw sample (unreadable, missing, empty)
        for shard_idx, source in enumerate(islice(iter(shards), first_shard, None), start=first_shard):
            rng = random.Random(self._seed("shuffle", stream, shard_idx))
            samples = _buffer_shuffle(shard_samples(source["url"], counter), self.shuffle_buffer, rng)
            skip = first_offset if shard_idx == first_shard else 0
            n = 0
            for n, sample in enumerate(samples, start=1):
                if n - 1 >= skip:
                    yield shard_idx, n - 1, sample
            empty = empty + 1 if n == 0 else 0
            if empty > MAX_EMPTY_SHARDS:
                raise RuntimeError(f"{MAX_EMPTY_SHARDS} shards in a row could not be read ({counter.count} errors);"
                                   f" check the shard paths, e.g. {source['url']}")

    def decode(self, sample: dict, stream: int, shard_idx: int, offset: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image, caption tokens); tokens are None for an image without caption when text is optional."""
        from farl_edge.tokenizer import tokenize

        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise BadSample(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no image ({', '.join(IMAGE_KEYS)})")
        if "txt" not in sample and self.require_text:
            raise BadSample(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no caption (txt)")
        caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
        if not caption and self.require_text:
            raise BadSample(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has an empty caption")
        rng = random.Random(self._seed("crop", stream, shard_idx, offset))
        try:
            image = decode_image(sample[key], self.image_size, rng, self.crop_scale, self.crop_ratio)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for damaged or unknown images
            raise BadSample(f"sample {sample.get('__key__')!r} in {sample.get('__url__')}: cannot decode {key}: {exc}") from exc
        return image, (tokenize(caption, self.context_length)[0] if caption else None)

    def stream_samples(self, stream: int, start: dict | None = None, counter: BadSampleCounter | None = None):
        """Decoded (image, tokens, shard index, offset) of one stream; bad samples counted and skipped."""
        counter = counter or BadSampleCounter()
        last_good_shard, last_shard = (start or {}).get("shard", 0), None
        for shard_idx, offset, sample in self.raw_stream(stream, start, counter):
            if shard_idx != last_shard:
                last_shard = shard_idx
                if shard_idx - last_good_shard > MAX_EMPTY_SHARDS:
                    raise RuntimeError(f"{MAX_EMPTY_SHARDS} shards in a row gave no usable sample"
                                       f" ({counter.count} bad samples so far); check the shard paths")
            try:
                image, tokens = self.decode(sample, stream, shard_idx, offset)
            except (BadSample, UnicodeDecodeError) as exc:  # one bad sample must not stop training
                counter(exc)
                continue
            last_good_shard = shard_idx
            yield image, tokens, shard_idx, offset

    def stream_batches(self, stream: int):
        start = self.positions[stream] or {}
        counter = BadSampleCounter(int(start.get("bad", 0)), self.log_first_bad,
                                   where=f" (rank {self.rank}, stream {stream})")
        images, texts, has_text = [], [], []
        no_text = torch.zeros(self.context_length, dtype=torch.long)
        for image, tokens, shard_idx, offset in self.stream_samples(stream, start, counter):
            images.append(image)
            texts.append(no_text if tokens is None else tokens)
            has_text.append(tokens is not None)
            if len(images) == self.batch_size:
                yield {"image": torch.stack(images), "text": torch.stack(texts), "has_text": torch.tensor(has_text),
                       "stream": stream, "shard": shard_idx, "offset": offset + 1, "bad": counter.count}
                images, texts, has_text = [], [], []


class StreamTracker:
    """Main-process record of what was consumed from each stream: the data part of a checkpoint."""

    def __init__(self, num_streams: int, positions: list[dict] | None = None, next_stream: int = 0):
        self.num_streams = num_streams
        self.positions = list(positions) if positions else [None] * num_streams
        self.next_stream = next_stream % num_streams

    def update(self, batch: dict) -> None:
        stream = int(batch["stream"])
        if stream != self.next_stream:
            raise RuntimeError(f"expected a batch from data stream {self.next_stream}, got one from {stream}")
        self.positions[stream] = {"shard": int(batch["shard"]), "offset": int(batch["offset"]), "bad": int(batch["bad"])}
        self.next_stream = (stream + 1) % self.num_streams

    @property
    def bad_samples(self) -> int:
        return sum(p["bad"] for p in self.positions if p)

    def state(self) -> dict:
        return {"num_streams": self.num_streams, "next_stream": self.next_stream, "positions": list(self.positions)}


def make_loader(dataset: LaionFaceShards, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches are built in the dataset (``batch_size=None``); one stream per worker."""
    if max(1, workers) != dataset.num_streams:
        raise UserError(f"{workers} workers need a dataset with {max(1, workers)} streams, not {dataset.num_streams}")
    kwargs = dict(prefetch_factor=2, persistent_workers=False) if workers > 0 else {}
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, **kwargs)

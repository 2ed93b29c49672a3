"""Read a run's TensorBoard event files without TensorFlow: its scalars and images, by tag.

``read_event_log(logdir)`` reads every ``events.out.tfevents.*`` file in ``logdir`` (a resumed run
adds one file per start), oldest first, and returns an ``EventLog``: for each tag the values
sorted by step, the last one written winning when a step repeats (a resumed run logs again from
its checkpoint's step). Scalars are the ``simple_value`` summaries ``tensorboardX`` writes
(``spiral.actors.monitoring.Monitor``); images are the encoded PNG bytes of image summaries.

An event file is a sequence of TFRecords: ``uint64 length``, ``uint32`` masked CRC-32C of the
length, ``length`` bytes of an ``Event`` protocol buffer, ``uint32`` masked CRC-32C of the data.
The length's CRC is checked (4 bytes, cheap); the data's is not (pure-Python CRC-32C runs at a few
MB/s and event files with images grow large), but a damaged record fails to parse as an
``Event``. A record cut short at the end of a file is the normal state of a file being written
by a live run: it is ignored. Anything else damaged raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import struct
from typing import Iterator

from google.protobuf.message import DecodeError
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

EVENT_FILE_PATTERN = "events.out.tfevents.*"


@dataclasses.dataclass(frozen=True)
class EventLog:
    """What a run logged to TensorBoard: ``{tag: [(step, value), ...]}``, each sorted by step."""
    scalars: dict[str, list[tuple[int, float]]]
    images: dict[str, list[tuple[int, bytes]]]   # encoded images (PNG from tensorboardX)

    def scalar(self, tag: str) -> list[tuple[int, float]]:
        return self.scalars.get(tag, [])


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (rotate right by 15, add a constant)."""
    crc = crc32c(data) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str) -> Iterator[bytes]:
    """The data of each complete TFRecord in ``path``; a record cut short at the end is dropped."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset + 12 <= len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        if masked_crc32c(header) != length_crc:
            raise ValueError(f"{path}: damaged TFRecord header at byte {offset} (its length's CRC "
                             f"does not match): not an event file, or a corrupted one.")
        end = offset + 12 + length
        if end + 4 > len(data):
            return  # the last record is still being written
        yield data[offset + 12:end]
        offset = end + 4


def read_event_file(path: str) -> Iterator[event_pb2.Event]:
    for record in read_records(path):
        try:
            yield event_pb2.Event.FromString(record)
        except DecodeError as error:
            raise ValueError(f"{path}: a record is not a TensorBoard Event ({error}).") from None


def event_files(logdir: str) -> list[str]:
    """The event files of ``logdir``, oldest first (their names start with the creation time)."""
    paths = glob.glob(os.path.join(glob.escape(logdir), EVENT_FILE_PATTERN))

    def creation_time(path):
        parts = os.path.basename(path).split(".")
        return (int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0, path)

    return sorted(paths, key=creation_time)


def read_event_log(logdir: str) -> EventLog:
    """Scalars and images of every event file in ``logdir`` (empty if it has none)."""
    scalars: dict[str, dict[int, float]] = {}
    images: dict[str, dict[int, bytes]] = {}
    for path in event_files(logdir):
        for event in read_event_file(path):
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
                elif kind == "image":
                    images.setdefault(value.tag, {})[int(event.step)] = value.image.encoded_image_string
    return EventLog({tag: sorted(by_step.items()) for tag, by_step in scalars.items()},
                    {tag: sorted(by_step.items()) for tag, by_step in images.items()})

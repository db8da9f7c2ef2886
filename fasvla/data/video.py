"""Reading and writing the mp4 videos of LeRobot datasets with PyAV (AV1 or H.264)."""

import gc
import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np

# LeRobot's default tolerance between a requested timestamp and the decoded frame's.
TOLERANCE_S = 1e-4


class VideoDecoder:
    """Frames of mp4 files at given timestamps (seconds from the start of the file), HWC uint8 RGB.

    Keeps a few files open (`max_open`) so that consecutive reads of one episode do not reopen it. Each decode seeks
    to the keyframe before the timestamp and decodes forward to the frame closest to it.

    Open files belong to the process that opened them. A forked DataLoader worker opens its own (sharing FFmpeg's
    demuxer state across processes corrupts the reads) and never frees the ones it inherited, those of every decoder
    alive at the fork: their decoder threads did not survive the fork, and FFmpeg's cleanup would wait for them
    forever or crash. For the same reason a child never collects the garbage it inherits (the end of this file).
    """

    def __init__(self, max_open: int = 4):
        self._containers: OrderedDict[Path, av.container.InputContainer] = OrderedDict()
        self._max_open = max_open
        _DECODERS.add(self)

    def frame_at(self, path: Path, timestamp: float, tolerance_s: float = TOLERANCE_S) -> np.ndarray:
        container = self._open(Path(path))
        stream = container.streams.video[0]
        container.seek(max(0, int(timestamp / stream.time_base)), stream=stream, backward=True, any_frame=False)
        best = None
        for frame in container.decode(stream):
            if best is None or abs(frame.time - timestamp) < abs(best.time - timestamp):
                best = frame
            if frame.time >= timestamp - tolerance_s:
                break
        if best is None or abs(best.time - timestamp) > tolerance_s:
            found = None if best is None else round(best.time, 6)
            raise ValueError(f"{path}: no frame within {tolerance_s} s of t = {timestamp:.6f} s (closest: {found})")
        return best.to_ndarray(format="rgb24")

    def _open(self, path: Path):
        if path in self._containers:
            self._containers.move_to_end(path)
            return self._containers[path]
        if not path.is_file():
            raise FileNotFoundError(f"video file missing: {path}")
        self._containers[path] = av.open(str(path))
        while len(self._containers) > self._max_open:
            self._containers.popitem(last=False)[1].close()
        return self._containers[path]

    def close(self):
        for container in self._containers.values():
            container.close()
        self._containers.clear()

    def __getstate__(self):  # spawned DataLoader workers get a fresh decoder, not open file handles
        return {"_containers": OrderedDict(), "_max_open": self._max_open}

    def __setstate__(self, state):
        self.__dict__.update(state)
        _DECODERS.add(self)


_DECODERS = weakref.WeakSet()  # every decoder of this process
_INHERITED = []  # in a forked child: the parent's open files, kept alive and never used (see VideoDecoder)


def _forget_inherited_files() -> None:
    for decoder in list(_DECODERS):
        _INHERITED.extend(decoder._containers.values())
        decoder._containers = OrderedDict()


# Garbage that holds FFmpeg codecs (a finished encoder in a reference cycle with its stream, a decoder dropped in one)
# must be freed where its threads exist: collected in a forked child, it would wait for them forever or crash. The
# objects alive at a fork are frozen for it (never collected in the child), and thawed again in the parent.
os.register_at_fork(before=gc.freeze, after_in_parent=gc.unfreeze, after_in_child=_forget_inherited_files)


@contextmanager
def _scheduling_kept():
    """Restores the calling thread's scheduling policy and priority on exit. Run as root, the SVT-AV1 encoder leaves
    the thread that opened it real-time (SCHED_FIFO, priority 99; measured with PyAV 18.1's SVT-AV1 4.1): whatever
    that thread does next, a training loop or a busy wait, then starves every other process on its core."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def write_video(path: Path, frames: np.ndarray, fps: int, codec: str = "libsvtav1") -> dict:
    """Encode (T, H, W, 3) uint8 frames at `fps`; returns LeRobot's video info for meta/info.json.

    Every frame is a keyframe-friendly short GOP (g=2, as LeRobot encodes) so that random access stays cheap.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with _scheduling_kept(), av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": "2"} if codec != "libsvtav1" else {"g": "2", "crf": "30", "preset": "11", "svtav1-params": "log-level=0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return {"video.height": height, "video.width": width, "video.codec": "av1" if "av1" in codec else "h264",
            "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
            "has_audio": False}

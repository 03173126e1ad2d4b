"""Shrink a prepared clip for a copy to another machine, and rebuild it there.

    python tools/gpu_carry.py pack PREPARED_DIR PACKED_DIR     # here
    python tools/gpu_carry.py unpack PACKED_DIR PREPARED_DIR   # there (numpy, opencv, soundfile)

Training reads only the lower face of the atlas, so ``pack`` keeps the atlas rows from 128/256
down (columns 32..224/256) as JPEG (quality 95; mean error ~1 level of 255 on GRID), bit-packs
the atlas mask, stores the vertices as float16 offsets from the reference mesh (error < 2e-4),
the audio as FLAC, and drops the landmarks and the raw atlas. The 3-minute GRID clip goes from
2 GB to 49 MB. The rebuilt clip trains like the original; it is not meant for synthesis or
evaluation (the upper face of its atlas is black).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

TOP, LEFT, RIGHT = 128, 32, 224  # for a 256 atlas; scaled for other sizes
DROPPED = ("atlas_raw", "landmarks", "landmarks_raw")


def _box(size: int) -> tuple[int, int, int]:
    return TOP * size // 256, LEFT * size // 256, RIGHT * size // 256


def pack(src: Path, dst: Path) -> None:
    import cv2
    import soundfile as sf

    dst.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for name in DROPPED:
        manifest["arrays"].pop(name, None)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    skip = {"manifest.json", "atlas.npy", "atlas_mask.npy", "vertices.npy", "audio.wav"} | {f"{n}.npy" for n in DROPPED}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy(f, dst / f.name)
    atlas = np.load(src / "atlas.npy", mmap_mode="r")
    t, left, right = _box(atlas.shape[1])
    blobs = [cv2.imencode(".jpg", np.ascontiguousarray(a[t:, left:right, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
             for a in atlas]
    np.save(dst / "atlas_jpeg_len.npy", np.array([len(b) for b in blobs]))
    (dst / "atlas_jpeg.bin").write_bytes(b"".join(blobs))
    mask = np.load(src / "atlas_mask.npy", mmap_mode="r")
    np.savez_compressed(dst / "atlas_mask_bits.npz", bits=np.packbits(np.asarray(mask[:, t:, left:right]), axis=-1),
                        shape=np.array(mask.shape))
    ref = np.load(src / "reference_vertices.npy")
    np.save(dst / "vertices_f16.npy", (np.load(src / "vertices.npy") - ref[None]).astype(np.float16))
    audio, rate = sf.read(src / "audio.wav", dtype="int16")
    sf.write(dst / "audio.flac", audio, rate)


def unpack(src: Path, dst: Path) -> None:
    import cv2
    import soundfile as sf

    dst.mkdir(parents=True, exist_ok=True)
    own = {"atlas_jpeg.bin", "atlas_jpeg_len.npy", "atlas_mask_bits.npz", "vertices_f16.npy", "audio.flac"}
    for f in src.iterdir():
        if f.name not in own:
            shutil.copy(f, dst / f.name)
    z = np.load(src / "atlas_mask_bits.npz")
    shape = tuple(int(v) for v in z["shape"])
    t, left, right = _box(shape[1])
    atlas = np.lib.format.open_memmap(dst / "atlas.npy", "w+", np.uint8, shape + (3,))
    blob, offset = (src / "atlas_jpeg.bin").read_bytes(), 0
    for i, n in enumerate(np.load(src / "atlas_jpeg_len.npy")):
        atlas[i, t:, left:right] = cv2.imdecode(np.frombuffer(blob[offset:offset + n], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        offset += n
    atlas.flush()
    mask = np.zeros(shape, bool)
    mask[:, t:, left:right] = np.unpackbits(z["bits"], axis=-1, count=right - left).astype(bool)
    np.save(dst / "atlas_mask.npy", mask)
    ref = np.load(src / "reference_vertices.npy")
    np.save(dst / "vertices.npy", np.load(src / "vertices_f16.npy").astype(np.float32) + ref[None])
    audio, rate = sf.read(src / "audio.flac", dtype="int16")
    sf.write(dst / "audio.wav", audio, rate)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        raise SystemExit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))

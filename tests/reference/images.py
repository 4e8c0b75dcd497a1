"""Preprocessing goldens: real photos that scikit-image ships and synthetic images of awkward
sizes and modes, run through qwen-vl-utils' fetch_image and the HF PIL image processor."""
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from qwen_vl_utils import fetch_image

# Only images up to this many pixel_values entries are stored whole; every case stores the
# resized RGB image and row/column sums of pixel_values.
MAX_STORED_VALUES = 120_000


def smooth_rgb(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients, hard-edged rectangles and a textured band: compressible, yet with edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + y) / 17.0)], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        img[y0:y0 + rng.integers(1, h // 2 + 2), x0:x0 + rng.integers(1, w // 2 + 2)] = rng.integers(0, 256, 3)
    if w * h < 1_000_000:  # a noise band where it costs little to store
        band = slice(h // 3, h // 3 + max(1, h // 20))
        img[band] = rng.integers(0, 256, img[band].shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png16_rgb(path: Path, rgb16: np.ndarray):
    """Minimal PNG writer for 16-bit RGB (colour type 2, bit depth 16, no filtering)."""
    import struct
    import zlib
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def write_inputs(img_dir: Path):
    """Create the input images; returns [(name, file, min_pixels, max_pixels)]."""
    from skimage import data
    img_dir.mkdir(parents=True, exist_ok=True)
    cases = []

    def add(name, pil, fmt="PNG", min_p=None, max_p=None, **save):
        path = img_dir / f"{name}.{ 'jpg' if fmt == 'JPEG' else 'png'}"
        pil.save(path, fmt, **save)
        cases.append((name, path.name, min_p, max_p))

    add("astronaut", Image.fromarray(data.astronaut()), max_p=128 * 28 * 28)
    add("chelsea", Image.fromarray(data.chelsea()))
    add("coffee_edge", Image.fromarray(data.coffee()[100:300, 150:450]), max_p=32 * 28 * 28)
    add("camera_gray", Image.fromarray(data.camera()), max_p=128 * 28 * 28)
    add("tiny_10x7", Image.fromarray(smooth_rgb(10, 7, 1)))
    add("tiny_1x1", Image.fromarray(smooth_rgb(1, 1, 2)))
    add("thin_29x1000", Image.fromarray(smooth_rgb(29, 1000, 3)))
    add("big_3000x2000", Image.fromarray(smooth_rgb(3000, 2000, 4)))
    cases.append(("big_3000x2000_edge", "big_3000x2000.png", None, 256 * 28 * 28))
    rgba = np.concatenate([smooth_rgb(97, 61, 5), np.tile(np.linspace(0, 255, 97, dtype=np.uint8), (61, 1))[..., None]], -1)
    add("rgba_97x61", Image.fromarray(rgba, "RGBA"))
    add("gray_la_50x40", Image.fromarray(np.dstack([smooth_rgb(50, 40, 6)[..., 0], smooth_rgb(50, 40, 7)[..., 1]]), "LA"))
    g16 = (np.linspace(0, 1, 83 * 45).reshape(45, 83) ** 3 * 600).astype(np.uint16)  # spans the 255 clip
    add("gray16_83x45", Image.fromarray(g16, "I;16"))
    add("palette_64x48", Image.fromarray(smooth_rgb(64, 48, 8)).convert("P", palette=Image.ADAPTIVE, colors=32))
    # PIL cannot write 16-bit RGB, so this PNG is written directly.
    rgb16 = smooth_rgb(71, 53, 9).astype(np.uint16) * 257 + np.arange(71, dtype=np.uint16)[None, :, None]
    write_png16_rgb(img_dir / "rgb16_71x53.png", rgb16)
    cases.append(("rgb16_71x53", "rgb16_71x53.png", None, None))
    # JPEG with EXIF orientation 6 (rotate 90° CW to display); the reference ignores it.
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif_rot_jpeg", Image.fromarray(data.chelsea()[:200, :300]), fmt="JPEG", quality=92, exif=exif.tobytes())
    return cases


def golden(processor, img_dir: Path, out_dir: Path, cases):
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for name, fname, min_p, max_p in cases:
        ele = {"image": str(img_dir / fname)}
        original = Image.open(img_dir / fname)
        if min_p is not None:
            ele["min_pixels"] = min_p
        if max_p is not None:
            ele["max_pixels"] = max_p
        resized = fetch_image(ele)
        ip = processor.image_processor
        kwargs = {}
        if min_p is not None or max_p is not None:
            kwargs["size"] = {"shortest_edge": min_p or ip.size["shortest_edge"], "longest_edge": max_p or ip.size["longest_edge"]}
        feats = ip(images=[resized], return_tensors="np", **kwargs)
        pv = feats["pixel_values"].astype(np.float32)
        grid = feats["image_grid_thw"].astype(np.int64)
        resized.save(out_dir / f"{name}.resized.png")
        np.save(out_dir / f"{name}.rowsum.npy", pv.astype(np.float64).sum(1))
        np.save(out_dir / f"{name}.colsum.npy", pv.astype(np.float64).sum(0))
        stored = pv.size <= MAX_STORED_VALUES
        if stored:
            np.save(out_dir / f"{name}.pixel_values.npy", pv)
        index.append(dict(name=name, file=fname, min_pixels=min_p, max_pixels=max_p,
                          original_size=list(original.size), resized_size=list(resized.size),
                          grid_thw=grid[0].tolist(), pixel_values_stored=stored, mode=original.mode))
    (out_dir / "cases.json").write_text(json.dumps(index, indent=1))
    return index

"""Decoding and encoding images without losing what the user cares about.

`load` gives pixels as float32 HxWxC in [0, 1] (C is 1 for grayscale, 3 for colour), the
alpha channel apart, and the metadata needed to write the result back the same way: bit
depth (decided by the file's sample type, never by pixel values), grayscale, ICC profile
and EXIF (orientation applied on load, reset to 1 on save).

`save` writes atomically: a temporary file in the target folder, then a rename, so an
interrupted run never leaves a half-written image under the real name.

Pillow reads 16-bit colour PNG/TIFF as 8-bit, so those are decoded with OpenCV, and
written with OpenCV (PNG, metadata chunks added here) or tifffile (TIFF, ICC kept).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 400_000_000  # 400 MP: bigger than any camera, smaller than a bomb
TEMP_PREFIX = ".restorer-"
TEMP_SUFFIX = ".part"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp alone gives 0600
ORIENTATION_TAG = 0x0112

FORMATS = {  # output format name -> (Pillow format, extension)
    "png": ("PNG", ".png"),
    "jpg": ("JPEG", ".jpg"),
    "webp": ("WEBP", ".webp"),
    "tiff": ("TIFF", ".tif"),
    "bmp": ("BMP", ".bmp"),
}
EXTENSIONS = {
    ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".webp": "webp",
    ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
}
SIXTEEN_BIT_FORMATS = {"png", "tiff"}
ALPHA_FORMATS = {"png", "webp", "tiff"}  # the others (jpg, bmp) drop transparency


class ImageReadError(Exception):
    """A file that cannot be decoded; str() is the one-line message users see."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot read: {reason}")


class ImageWriteError(Exception):
    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot write: {reason}")


@dataclass
class ImageMeta:
    format: str = "png"  # one of FORMATS
    bit_depth: int = 8  # 8 or 16
    gray: bool = False
    icc: bytes | None = None
    exif: bytes | None = None  # with orientation already reset to 1
    notes: list[str] = field(default_factory=list)


@dataclass
class Image:
    pixels: np.ndarray  # float32 HxWxC in [0, 1], C = 1 or 3
    alpha: np.ndarray | None = None  # float32 HxW in [0, 1]
    meta: ImageMeta = field(default_factory=ImageMeta)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    def with_pixels(self, pixels: np.ndarray, alpha: np.ndarray | None = None) -> "Image":
        return replace(self, pixels=pixels, alpha=alpha if alpha is not None else self.alpha)


def format_of(path: str | os.PathLike) -> str | None:
    return EXTENSIONS.get(Path(path).suffix.lower())


# ---------------------------------------------------------------- loading


def load(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode an image file; raises ImageReadError with a one-line reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from None
    if path.is_dir():
        raise ImageReadError(path, "is a folder")
    if size == 0:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    try:
        with _pillow_pixel_limit(max_pixels), PILImage.open(path) as pil:
            return _decode(path, pil, max_pixels)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image, or a format restorer does not read") from None
    except PILImage.DecompressionBombError:
        with _pillow_pixel_limit(None), PILImage.open(path) as pil:  # the header only, to say it our way
            raise ImageReadError(path, _too_many_pixels(*pil.size, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower() or isinstance(e, EOFError):
            reason = "the file is truncated or corrupt (" + reason + ")"
        raise ImageReadError(path, reason) from None


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int | None):
    """Pillow's own decompression-bomb limit (89 MP, an error above 179 MP) set to ours while
    a file is opened: otherwise a real 196 MP photo is refused whatever --max-pixels says.
    Pillow's warning between its limit and twice it is silenced: `_decode` refuses those itself."""
    previous = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = max_pixels or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            yield
    finally:
        PILImage.MAX_IMAGE_PIXELS = previous


def _too_many_pixels(w: int, h: int, max_pixels: int | None) -> str:
    def count(n: int) -> str:
        return f"{n / 1e6:.0f} megapixels" if n >= 10_000_000 else f"{n} pixels"

    return (f"{w}x{h} is {count(w * h)}, over the limit of {count(max_pixels or 0)} "
            "(a guard against decompression bombs; raise it with --max-pixels)")


def _decode(path: Path, pil: PILImage.Image, max_pixels: int | None) -> Image:
    fmt = {"JPEG": "jpg", "PNG": "png", "TIFF": "tiff", "WEBP": "webp", "BMP": "bmp",
           "MPO": "jpg"}.get(pil.format or "", "png")
    w, h = pil.size
    if max_pixels and w * h > max_pixels:
        raise ImageReadError(path, _too_many_pixels(w, h, max_pixels))
    frames = getattr(pil, "n_frames", 1)
    # Only the first frame would be restored and written: refuse rather than lose the rest.
    # MPO (a JPEG with extra pictures: previews, depth or gain maps) keeps its main picture.
    if frames > 1 and pil.format != "MPO":
        what = f"a {pil.format} of {frames} pages" if pil.format == "TIFF" else f"an animated {pil.format} of {frames} frames"
        raise ImageReadError(path, f"{what}; restorer restores single pictures only (save each "
                             f"{'page' if pil.format == 'TIFF' else 'frame'} as its own file first)")
    meta = ImageMeta(format=fmt, icc=pil.info.get("icc_profile") or None)
    exif = pil.getexif()
    orientation = exif.get(ORIENTATION_TAG, 1) if exif else 1
    if exif:
        # A copy: exif_transpose below still needs to read the original orientation.
        carried = PILImage.Exif()
        carried.load(exif.tobytes())
        if ORIENTATION_TAG in carried:
            carried[ORIENTATION_TAG] = 1
        meta.exif = carried.tobytes()

    if _is_16bit_colour(path, pil):
        pixels, alpha = _decode_16bit_colour(path)
        pixels = _orient(pixels, orientation)
        alpha = _orient(alpha, orientation) if alpha is not None else None
        meta.bit_depth = 16
        return Image(pixels, alpha, meta)

    pil.load()  # decode now, so truncation surfaces here
    pil = ImageOps.exif_transpose(pil) if orientation != 1 else pil
    mode = pil.mode
    alpha = None
    if mode == "CMYK":
        pil, note = _cmyk_to_rgb(pil, meta.icc)
        meta.icc = None
        meta.notes.append(note)
        mode = "RGB"
    elif mode == "P" or mode == "PA":
        has_alpha = "transparency" in pil.info or mode == "PA"
        pil = pil.convert("RGBA" if has_alpha else "RGB")
        meta.notes.append("palette image converted to " + pil.mode)
        mode = pil.mode
    elif mode == "1":
        pil = pil.convert("L")
        mode = "L"
        meta.notes.append("1-bit image converted to 8-bit grayscale")
    elif mode in ("YCbCr", "LAB", "HSV"):
        pil = pil.convert("RGB")
        mode = "RGB"

    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (Pillow opens some as 32-bit "I"; the values are still 16-bit)
        arr = np.asarray(pil).astype(np.float64)
        meta.bit_depth = 16
        pixels = np.clip(arr / 65535.0, 0, 1).astype(np.float32)[..., None]
        meta.gray = True
        return Image(pixels, None, meta)
    if mode == "F":
        pixels = np.clip(np.asarray(pil, dtype=np.float32), 0, 1)[..., None]
        meta.gray, meta.bit_depth = True, 16
        return Image(pixels, None, meta)
    if mode in ("L", "LA"):
        arr = np.asarray(pil)
        if mode == "LA":
            alpha = arr[..., 1].astype(np.float32) / 255.0
            arr = arr[..., 0]
        meta.gray = True
        return Image((arr.astype(np.float32) / 255.0)[..., None], alpha, meta)
    if mode == "RGBA":
        arr = np.asarray(pil)
        return Image(arr[..., :3].astype(np.float32) / 255.0, arr[..., 3].astype(np.float32) / 255.0, meta)
    if mode != "RGB":
        pil = pil.convert("RGB")
        meta.notes.append(f"{mode} image converted to RGB")
    return Image(np.asarray(pil).astype(np.float32) / 255.0, None, meta)


def _is_16bit_colour(path: Path, pil: PILImage.Image) -> bool:
    if pil.mode not in ("RGB", "RGBA"):
        return False
    if pil.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(26)
        return len(header) >= 25 and header[24] == 16  # IHDR bit depth
    if pil.format == "TIFF":
        bits = pil.tag_v2.get(258)  # BitsPerSample
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(b == 16 for b in bits if b)
    return False


def _decode_16bit_colour(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        with PILImage.open(path) as pil:
            w, h = pil.size
        if w * h > 1 << 30:  # OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS)
            raise ImageReadError(path, f"{w}x{h} is over OpenCV's limit of 1074 megapixels for 16-bit colour")
        raise ImageReadError(path, "the 16-bit image could not be decoded (truncated or corrupt)")
    alpha = None
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[..., 3].astype(np.float32) / 65535.0
        arr = arr[..., :3]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    pixels = arr[..., ::-1].astype(np.float32) / 65535.0  # BGR -> RGB
    return np.ascontiguousarray(pixels), alpha


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HxW[xC] array."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _cmyk_to_rgb(pil: PILImage.Image, icc: bytes | None) -> tuple[PILImage.Image, str]:
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(pil, src, dst, outputMode="RGB")
            return rgb, "CMYK image converted to sRGB with its embedded ICC profile"
        except Exception:  # a broken profile: fall back to the naive conversion below
            pass
    return pil.convert("RGB"), "CMYK image converted to RGB (no usable ICC profile; colours approximate)"


# ---------------------------------------------------------------- saving


def to_integer(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    top = 65535 if bit_depth == 16 else 255
    out = np.clip(np.rint(np.nan_to_num(pixels) * top), 0, top)
    return out.astype(np.uint16 if bit_depth == 16 else np.uint8)


def save(
    image: Image,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    quality: int = 95,
) -> Path:
    """Encode `image` to `path` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fmt = format or format_of(path) or image.meta.format
    if fmt not in FORMATS:
        raise ImageWriteError(path, f"unknown output format {fmt!r}")
    try:  # encoded before any file exists: an encoding error leaves nothing behind
        data = encode(image, fmt, quality)
    except ImageWriteError:
        raise
    except (OSError, ValueError) as e:  # e.g. WebP's 16383-pixel side limit
        raise ImageWriteError(path, f"cannot encode it as {fmt}: {str(e) or type(e).__name__}") from None
    if path.is_dir():
        raise ImageWriteError(path, "a folder of that name is in the way")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    except (FileExistsError, NotADirectoryError):  # a file stands where a folder should be
        raise ImageWriteError(path, f"{_file_in_the_way(path.parent)} is a file, not a folder") from None
    except OSError as e:
        raise ImageWriteError(path, e.strerror or str(e)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: the half-written temporary is removed below
        raise ImageWriteError(path, e.strerror or str(e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _file_in_the_way(folder: Path) -> Path:
    """The nearest part of `folder` that exists as a file (why the folder cannot be made)."""
    for part in (folder, *folder.parents):
        if part.exists():
            return part if not part.is_dir() else folder
    return folder


def encode(image: Image, fmt: str, quality: int = 95) -> bytes:
    """The bytes of `image` in format `fmt`, keeping bit depth, gray, alpha, ICC and EXIF."""
    meta = image.meta
    bit_depth = meta.bit_depth if fmt in SIXTEEN_BIT_FORMATS else 8
    alpha = image.alpha if fmt in ("png", "webp", "tiff") else None
    pixels = image.pixels
    gray = pixels.shape[2] == 1
    if bit_depth == 16 and not gray:
        return _encode_16bit_colour(image, fmt, alpha)

    data = to_integer(pixels, bit_depth)
    if gray:
        data = data[..., 0]
        pil = PILImage.fromarray(data)  # uint16 -> "I;16", uint8 -> "L"
        if alpha is not None and bit_depth == 8:
            pil = PILImage.merge("LA", (pil, PILImage.fromarray(to_integer(alpha, 8), "L")))
    else:
        pil = PILImage.fromarray(data, "RGB")
        if alpha is not None:
            pil = PILImage.merge("RGBA", (*pil.split(), PILImage.fromarray(to_integer(alpha, 8), "L")))

    kwargs: dict = {}
    if meta.icc and fmt != "bmp":
        kwargs["icc_profile"] = meta.icc
    if meta.exif and fmt in ("jpg", "png", "webp", "tiff"):
        kwargs["exif"] = meta.exif
    if fmt == "jpg":
        kwargs.update(quality=int(quality), subsampling=0 if quality >= 90 else 2, optimize=True)
    elif fmt == "webp":
        kwargs.update(quality=int(quality), lossless=quality >= 100, method=4)
    elif fmt == "png":
        kwargs.update(compress_level=6)
    elif fmt == "tiff":
        kwargs.update(compression="tiff_deflate")
    buf = io.BytesIO()
    pil.save(buf, FORMATS[fmt][0], **kwargs)
    return buf.getvalue()


def _encode_16bit_colour(image: Image, fmt: str, alpha: np.ndarray | None) -> bytes:
    data = to_integer(image.pixels, 16)
    if alpha is not None:
        data = np.concatenate([data, to_integer(alpha, 16)[..., None]], axis=2)
    if fmt == "tiff":
        import tifffile

        extratags = []
        if image.meta.icc:
            extratags.append((34675, "B", len(image.meta.icc), image.meta.icc, True))
        buf = io.BytesIO()
        tifffile.imwrite(
            buf, data, photometric="rgb", compression="zlib",
            extrasamples=("unassalpha",) if alpha is not None else None, extratags=extratags,
        )
        return buf.getvalue()
    import cv2

    bgr = data[..., [2, 1, 0, 3]] if alpha is not None else data[..., ::-1]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ImageWriteError("<memory>", "OpenCV could not encode the 16-bit PNG")
    return _png_add_chunks(png.tobytes(), image.meta.icc, image.meta.exif)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_add_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR (OpenCV writes neither)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        raw = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        extra += _png_chunk(b"eXIf", raw)
    ihdr_end = 8 + 8 + 13 + 4  # signature, length+type, IHDR data, CRC
    return png[:ihdr_end] + extra + png[ihdr_end:]

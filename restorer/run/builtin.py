"""Built-in restoration operators: classical methods that need no download (numpy + OpenCV).

Each operator is a Runner (see restorer.run.runner): NCHW float32 in [0, 1] in, NCHW
float32 out. They are the fallback when no network is installed, and the building blocks
that pipelines reuse (inpainting for scratches and text).

    denoise   non-local means in a decorrelated colour space, at 16-bit precision
    dehaze    dark channel prior with guided-filter refinement (He et al., CVPR 2009)
    lowlight  LIME-style illumination map: max over RGB, edge-aware smoothing, gamma, divide
    upscale   Lanczos x2/x3/x4 plus edge-gated, overshoot-clamped unsharp masking
    inpaint   Telea fast-marching fill of a mask, per channel in float32

`builtin_runner("denoise")` (or "builtin:denoise", ...) builds one.
"""

from __future__ import annotations

import cv2
import numpy as np

from restorer.archs.requirements import Requirements
from restorer.run.runner import RunnerInfo

# Task name -> built-in operator id (catalog ids). There is no built-in derain or deblur.
BUILTIN_TASKS = {
    "denoise": "builtin:denoise",
    "dehaze": "builtin:dehaze",
    "lowlight": "builtin:lowlight",
    "superres": "builtin:upscale",
}


def device_warning(device: str) -> str | None:
    """The warning for a run that asked for CUDA and runs built-in operators: they are numpy
    and OpenCV on the CPU, whatever the device (None when nothing else was asked for)."""
    if device != "cuda":
        return None
    return "CUDA was asked for, but the built-in operators run on the CPU only (no GPU version)"


# Strength used when the caller gives none; each is documented on its operator.
DEFAULT_STRENGTH = {
    "builtin:denoise": 0.5,
    "builtin:dehaze": 0.85,
    "builtin:lowlight": 0.8,
    "builtin:upscale": 0.5,
}


# ---------------------------------------------------------------------------------------
# Shared helpers


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter with a one-channel guide (ECCV 2010).

    Edge-preserving smoothing of `src` (HxW or HxWxC) that follows the edges of `guide` (HxW):
    locally src ~ a * guide + b, fitted in (2r+1)^2 windows with ridge `eps`. Box filters make
    it O(pixels) whatever the radius. Computed in float64: the variance is a difference of
    large means, which float32 loses for flat regions.
    """
    guide = guide.astype(np.float64)
    src = src.astype(np.float64)
    size = (2 * radius + 1, 2 * radius + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, size, borderType=cv2.BORDER_REFLECT)

    def per_channel(a: np.ndarray) -> np.ndarray:  # broadcast an HxW map over src's channels
        return a[:, :, None] if src.ndim == 3 else a

    mean_g = box(guide)
    var_g = box(guide * guide) - mean_g * mean_g
    mean_s = box(src)
    cov_gs = box(per_channel(guide) * src) - per_channel(mean_g) * mean_s
    a = cov_gs / per_channel(var_g + eps)
    b = mean_s - a * per_channel(mean_g)
    return box(a) * per_channel(guide) + box(b)


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an HxWx3 RGB image (an HxW image is returned as is)."""
    if image.ndim == 2:
        return image
    return image[:, :, 0] * 0.299 + image[:, :, 1] * 0.587 + image[:, :, 2] * 0.114


def _check_strength(strength: float) -> float:
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    return strength


class _BuiltinOperator:
    """Runner plumbing shared by the operators: batch checks and the NCHW <-> HWC loop.

    Subclasses declare their `needs` and implement `_process(image, index, extra)` on one
    HxWxC (or HxW for one channel) float32 image. The engine feeds RGB; one-channel (gray)
    batches are accepted as well.
    """

    needs = Requirements(overlap=0)

    def __init__(self, model_id: str, strength: float):
        self.strength = _check_strength(strength)
        self.info = RunnerInfo(model=model_id, backend="builtin", provider="numpy",
                               notes=[f"strength={self.strength:g}"])

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] not in (1, 3):
            raise ValueError(f"{self.info.model}: expected an N x C x H x W batch with C = 1 or 3, "
                             f"got shape {batch.shape}")
        batch = batch.astype(np.float32, copy=False)
        outputs = []
        for index in range(batch.shape[0]):
            image = batch[index].transpose(1, 2, 0)
            if image.shape[2] == 1:
                image = image[:, :, 0]
            result = self._process(np.ascontiguousarray(image), index, extra)
            if result.ndim == 2:
                result = result[:, :, None]
            outputs.append(result.transpose(2, 0, 1))
        return np.ascontiguousarray(np.stack(outputs).astype(np.float32, copy=False))

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass  # holds nothing


# ---------------------------------------------------------------------------------------
# denoise


# An orthonormal opponent colour transform (luma, red-blue, green-magenta), as BM3D uses:
# it decorrelates the channels of natural images, and being orthonormal it keeps white
# noise white with the same sigma, so one sigma -> h rule serves every channel. It is also
# exactly invertible, unlike OpenCV's float CIELAB (off by up to ~1/300 on a round trip).
_OPPONENT = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], np.float64) / np.sqrt([[3.0], [2.0], [6.0]])
_OPPONENT_OFFSET = np.array([0.0, 1 / np.sqrt(2.0), 2 / np.sqrt(6.0)])  # makes every channel >= 0
_OPPONENT_TO_U16 = 65535 / np.sqrt(3.0)  # luma spans [0, sqrt 3]; the chroma ranges fit inside
_U16 = 65535.0


class NonLocalMeansDenoiser(_BuiltinOperator):
    """OpenCV's fast non-local means (Buades et al. 2005), run on 16-bit data.

    OpenCV's colour NLM (fastNlMeansDenoisingColored) takes 8-bit input only, which would
    throw away the low bits of a 16-bit photo. Its grey path takes uint16 with the L1 patch
    norm, so colour images are taken to an opponent colour space, quantised to uint16 (1/65535
    steps, far below any noise worth removing), and denoised as luma (one channel) and chroma
    (two channels, one shared patch distance). Gray images go through the same uint16 path.
    On Gaussian noise this also beats the 8-bit CIELAB path by 1.5 to 3 dB.

    strength s in [0, 1] is the noise level the filter is tuned for: sigma = 50 s on the
    0-255 scale (default 0.5: sigma 25, good for sigma 15 to 30). With the L1 norm the best
    h was measured at 0.8 sigma for luma and gray and 1.0 sigma for chroma.
    """

    TEMPLATE = 7  # patch size compared
    SEARCH = 21  # window searched for similar patches
    # A pixel depends on input pixels up to SEARCH//2 + TEMPLATE//2 = 13 away; 16 leaves margin.
    needs = Requirements(overlap=16, preferred_tile=512)

    def __init__(self, strength: float = DEFAULT_STRENGTH["builtin:denoise"]):
        super().__init__("builtin:denoise", strength)
        sigma = 50.0 * self.strength / 255.0  # in [0, 1] units
        self.h_luma = 0.8 * sigma
        self.h_chroma = 1.0 * sigma

    def _nlm_u16(self, channels_u16: np.ndarray, h: float) -> np.ndarray:
        return cv2.fastNlMeansDenoising(channels_u16, [float(h)], None, self.TEMPLATE, self.SEARCH,
                                        cv2.NORM_L1)

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        if self.strength == 0.0:
            return image.copy()
        if image.ndim == 2:
            gray = np.round(np.clip(image, 0.0, 1.0) * _U16).astype(np.uint16)
            return self._nlm_u16(gray, self.h_luma * _U16).astype(np.float32) / np.float32(_U16)
        height, width, _ = image.shape
        flat = np.clip(image, 0.0, 1.0).reshape(-1, 3).astype(np.float64)
        opponent = (flat @ _OPPONENT.T + _OPPONENT_OFFSET) * _OPPONENT_TO_U16
        opponent = np.clip(np.round(opponent), 0, 65535).astype(np.uint16).reshape(height, width, 3)
        luma = self._nlm_u16(np.ascontiguousarray(opponent[:, :, 0]), self.h_luma * _OPPONENT_TO_U16)
        chroma = self._nlm_u16(np.ascontiguousarray(opponent[:, :, 1:]),
                               self.h_chroma * _OPPONENT_TO_U16)
        opponent = np.dstack([luma, chroma]).reshape(-1, 3).astype(np.float64)
        rgb = (opponent / _OPPONENT_TO_U16 - _OPPONENT_OFFSET) @ _OPPONENT
        return np.clip(rgb, 0.0, 1.0).astype(np.float32).reshape(height, width, 3)


# ---------------------------------------------------------------------------------------
# dehaze


def dark_channel(image: np.ndarray, radius: int) -> np.ndarray:
    """Minimum over the colour channels, then over a (2r+1)^2 square (He et al. 2009)."""
    per_pixel = image.min(axis=2) if image.ndim == 3 else image
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    return cv2.erode(per_pixel, kernel, borderType=cv2.BORDER_REFLECT)


class DarkChannelDehazer(_BuiltinOperator):
    """Dark channel prior dehazing (He, Sun and Tang, CVPR 2009), guided-filter refined.

    The haze model I = J t + A (1 - t). A (atmospheric light) is the colour of the brightest
    input pixel among the 0.1 % haziest pixels (highest dark channel). The transmission
    t = 1 - omega * dark(I / A) is refined with a guided filter on the input's luma (the
    guided-filter paper's replacement for soft matting), floored at t0 = 0.1, and
    J = (I - A) / t + A. The patch and filter radii grow with the image (the paper's 15 px
    patch and 60 px filter at about 400 px) so the result does not depend on resolution; A is
    a whole-image statistic, hence whole_image.

    Bright regions close to A in colour (sky, white walls) break the prior: their dark
    channel is high without haze, t comes out tiny and dividing by it blows them into noisy,
    over-saturated blue. So, as the "tolerance" variants of DCP do, t is raised where
    |I - A| < K: t' = min(max(K / |I - A|, 1) * t, 1). strength = omega, default 0.85: on
    the SOTS sample the paper's 0.95 darkened the photo (PSNR to the clear image 20.4 ->
    14.7 dB), 0.85 with the tolerance lifts it to 21.3 dB with more contrast; 0 leaves the
    image unchanged.
    """

    needs = Requirements(overlap=0, whole_image=True)
    T0 = 0.1
    SKY_TOLERANCE = 0.3  # K, on the [0, 1] scale
    BRIGHTEST_FRACTION = 0.001
    GUIDED_EPS = 1e-3

    def __init__(self, strength: float = DEFAULT_STRENGTH["builtin:dehaze"]):
        super().__init__("builtin:dehaze", strength)

    @staticmethod
    def radii(height: int, width: int) -> tuple[int, int]:
        """(dark-channel patch radius, guided-filter radius) for an image of this size."""
        patch = max(2, round(7 * min(height, width) / 400))
        return patch, 8 * patch

    @classmethod
    def atmospheric_light(cls, image: np.ndarray, dark: np.ndarray) -> np.ndarray:
        count = max(1, int(dark.size * cls.BRIGHTEST_FRACTION))
        candidates = np.argpartition(dark.ravel(), -count)[-count:]
        pixels = image.reshape(dark.size, -1)[candidates]
        return pixels[np.argmax(pixels.sum(axis=1))]

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        image = np.clip(image, 0.0, 1.0)
        if self.strength == 0.0:
            return image.copy()
        patch, filter_radius = self.radii(*image.shape[:2])
        airlight = np.maximum(self.atmospheric_light(image, dark_channel(image, patch)), 1e-3)
        normalised = (image / airlight).astype(np.float32)
        transmission = 1.0 - self.strength * dark_channel(normalised, patch)
        transmission = guided_filter(luminance(image), transmission, filter_radius, self.GUIDED_EPS)
        distance = np.abs(image - airlight).max(axis=2) if image.ndim == 3 else np.abs(image - airlight[0])
        transmission = np.minimum(np.maximum(self.SKY_TOLERANCE / np.maximum(distance, 1e-3), 1.0) * transmission, 1.0)
        transmission = np.maximum(transmission, self.T0)
        if image.ndim == 3:
            transmission = transmission[:, :, None]
        restored = (image - airlight) / transmission + airlight
        return np.clip(restored, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# low-light enhancement


class IlluminationMapEnhancer(_BuiltinOperator):
    """Low-light enhancement by an illumination map, after LIME (Guo, Li and Ling, TIP 2017).

    The initial illumination is the maximum over R, G, B (the brightest channel bounds how
    much light reached the pixel). LIME refines it by a structure-aware optimisation; here a
    self-guided filter does that job: it smooths texture inside regions while keeping the
    strong edges between lit and unlit regions, so dividing by it does not halo. The map is
    raised to gamma = strength (LIME's 0.8 by default; 0 leaves the image unchanged, 1 divides
    the full map out) and the image divided by it.

    Brightening a dark region amplifies its sensor noise by the same gain, so, as LIME does,
    the result is denoised and recomposed by the map: out = R * T + denoise(R) * (1 - T), T the
    gamma-corrected illumination: dark regions take the denoised pixels, lit ones stay as
    they were. The noise level of R is estimated (Immerkaer's Laplacian estimator) and sets
    the non-local means strength, so a clean dark photo is barely touched.

    whole_image: the smoothing radius grows with the image (1/50 of the short side) so the
    result does not depend on resolution, and a map that wide would need huge tile overlaps;
    the work is a handful of box filters, so one piece is cheap even for large photos.
    """

    needs = Requirements(overlap=0, whole_image=True)
    GUIDED_EPS = 1e-3
    MIN_ILLUMINATION = 0.02  # bounds the gain at 1 / 0.02^gamma (23x at gamma 0.8) in black areas

    def __init__(self, strength: float = DEFAULT_STRENGTH["builtin:lowlight"]):
        super().__init__("builtin:lowlight", strength)

    @staticmethod
    def radius(height: int, width: int) -> int:
        return max(2, round(min(height, width) / 50))

    def illumination(self, image: np.ndarray) -> np.ndarray:
        initial = image.max(axis=2) if image.ndim == 3 else image
        refined = guided_filter(initial, initial, self.radius(*initial.shape), self.GUIDED_EPS)
        return np.maximum(refined, self.MIN_ILLUMINATION)

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        image = np.clip(image, 0.0, 1.0)
        if self.strength == 0.0:
            return image.copy()
        light = self.illumination(image) ** self.strength
        if image.ndim == 3:
            light = light[:, :, None]
        enhanced = np.clip(image / light, 0.0, 1.0).astype(np.float32)
        sigma = noise_sigma(enhanced)
        if sigma < 1.0 / 255:
            return enhanced
        denoised = NonLocalMeansDenoiser(min(1.0, sigma * 255 / 50))._process(enhanced, index, extra)
        keep = np.clip(light, 0.0, 1.0)
        return np.clip(enhanced * keep + denoised * (1 - keep), 0.0, 1.0).astype(np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise level of an image in [0, 1] (Immerkaer, CVIU 1996): the mean absolute
    response of a Laplacian difference kernel that cancels smooth image structure."""
    luma = luminance(image) if image.ndim == 3 else image
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    response = cv2.filter2D(luma.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


# ---------------------------------------------------------------------------------------
# upscale


class LanczosUpscaler(_BuiltinOperator):
    """Lanczos-4 upscaling followed by edge-gated, overshoot-clamped unsharp masking.

    Lanczos keeps more of the input's detail than bicubic; a downscaled photo is still soft
    at the new size, so the detail band (image minus a Gaussian blur of about one input pixel)
    is added back, times `amount` = 2 * strength (default strength 0.5). The boost is gated by
    an edge map (w = g^2 / (g^2 + k^2) of the blurred luma's gradient, so flat areas and their
    noise are left alone) and each pixel is clamped to the min..max of its 3x3 Lanczos
    neighbourhood, which removes the halos that unsharp masking otherwise draws beside edges.
    Everything is local: a tile needs the Lanczos support (4 input pixels) plus the blur and
    clamp footprints, hence overlap 8.
    """

    EDGE_KNEE = 0.02  # gradient (per output pixel, [0, 1] units) at which the gate is half open

    def __init__(self, scale: int = 2, strength: float = DEFAULT_STRENGTH["builtin:upscale"]):
        if scale not in (2, 3, 4):
            raise ValueError(f"builtin:upscale supports scale 2, 3 or 4, got {scale}")
        super().__init__("builtin:upscale", strength)
        self.scale = scale
        self.needs = Requirements(scale=scale, overlap=8, preferred_tile=512)
        self.info.notes.append(f"scale={scale}")

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        height, width = image.shape[:2]
        size = (width * self.scale, height * self.scale)
        upscaled = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
        if self.strength == 0.0:
            return np.clip(upscaled, 0.0, 1.0)
        sigma = 0.5 * self.scale  # about one input pixel's worth of blur, at the output scale
        blurred = cv2.GaussianBlur(upscaled, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        luma = luminance(blurred)
        gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8
        gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8
        energy = gx * gx + gy * gy
        gate = energy / (energy + self.EDGE_KNEE ** 2)
        if upscaled.ndim == 3:
            gate = gate[:, :, None]
        sharpened = upscaled + 2.0 * self.strength * gate * (upscaled - blurred)
        kernel = np.ones((3, 3), np.uint8)
        low = cv2.erode(upscaled, kernel, borderType=cv2.BORDER_REFLECT)
        high = cv2.dilate(upscaled, kernel, borderType=cv2.BORDER_REFLECT)
        return np.clip(np.clip(sharpened, low, high), 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------
# inpaint


class MaskInpainter(_BuiltinOperator):
    """Fills a mask from its surroundings: Telea's fast-marching method (2004), or
    Navier-Stokes (Bertalmio et al. 2001) with method="ns".

    Call with `mask=` an N x 1 x H x W float array, 1 (> 0.5) where pixels are to be filled.
    cv2.inpaint takes 3-channel images only as 8-bit, but float32 one channel at a time, so
    each channel is filled on its own in float32 (the fill order depends on the mask alone,
    so this equals a 3-channel fill, without the 8-bit rounding). Pixels outside the mask are
    returned bit-identical to the input. whole_image: the fill marches inward from the
    mask's border, so a masked region cut by a tile edge would be filled differently;
    only masked pixels cost time, so one piece is cheap.
    """

    needs = Requirements(overlap=0, whole_image=True)

    def __init__(self, radius: int = 3, method: str = "telea"):
        super().__init__("builtin:inpaint", 1.0)
        methods = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
        if method not in methods:
            raise ValueError(f"builtin:inpaint method must be 'telea' or 'ns', got {method!r}")
        self.radius = int(radius)
        self.flag = methods[method]
        self.info.notes = [f"method={method}", f"radius={self.radius}"]

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        if "mask" not in extra:
            raise ValueError("builtin:inpaint needs mask= (N x 1 x H x W, 1 where to fill)")
        mask = np.asarray(extra["mask"])
        batch = np.asarray(batch)
        expected = (batch.shape[0], 1, *batch.shape[2:]) if batch.ndim == 4 else None
        if mask.shape != expected:
            raise ValueError(f"builtin:inpaint: mask shape {mask.shape} does not match the batch "
                             f"{batch.shape}; expected {expected}")
        return super().__call__(batch, **extra)

    def _process(self, image: np.ndarray, index: int, extra: dict) -> np.ndarray:
        fill = extra["mask"][index, 0] > 0.5
        if not fill.any():
            return image.copy()
        mask_u8 = fill.astype(np.uint8)
        planes = [image] if image.ndim == 2 else [image[:, :, c] for c in range(image.shape[2])]
        # OpenCV's Telea code adds 8-bit-scale terms (+0.5 rounding, a gradient term of about
        # one unit) also to float images, so it is run on a 0..65535 scale where they vanish.
        filled = [cv2.inpaint(plane * np.float32(_U16), mask_u8, self.radius, self.flag)
                  / np.float32(_U16) for plane in planes]
        filled = filled[0] if image.ndim == 2 else np.dstack(filled)
        return np.where(fill if image.ndim == 2 else fill[:, :, None], filled, image)


# ---------------------------------------------------------------------------------------
# factory


_OPERATOR_IDS = {
    "denoise": "builtin:denoise",
    "dehaze": "builtin:dehaze",
    "lowlight": "builtin:lowlight",
    "superres": "builtin:upscale",
    "upscale": "builtin:upscale",
    "inpaint": "builtin:inpaint",
}


def builtin_runner(task_or_id: str, *, scale: int = 2, strength: float | None = None):
    """The built-in Runner for a task ("denoise") or an operator id ("builtin:denoise").

    scale applies to the upscaler only (2, 3 or 4); strength in [0, 1] (None: the operator's
    default, see DEFAULT_STRENGTH); the inpainter takes no strength. Unknown names raise a
    ValueError that lists what exists.
    """
    name = task_or_id.strip().lower()
    model_id = _OPERATOR_IDS.get(name, name)
    if model_id == "builtin:inpaint":
        if strength is not None:
            raise ValueError("builtin:inpaint takes no strength")
        return MaskInpainter()
    if model_id not in DEFAULT_STRENGTH:
        known = ", ".join(sorted(set(_OPERATOR_IDS) | set(_OPERATOR_IDS.values())))
        raise ValueError(f"no built-in operator {task_or_id!r} (there is no built-in derain or "
                         f"deblur); known: {known}")
    if strength is None:
        strength = DEFAULT_STRENGTH[model_id]
    if model_id == "builtin:upscale":
        return LanczosUpscaler(scale, strength)
    operator = {
        "builtin:denoise": NonLocalMeansDenoiser,
        "builtin:dehaze": DarkChannelDehazer,
        "builtin:lowlight": IlluminationMapEnhancer,
    }[model_id]
    return operator(strength)

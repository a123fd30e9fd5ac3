"""Generative super-resolution: diffusers pipelines as a Runner over tiles.

A model is a folder in the store (restorer.zoo.diffusers_folder). Its components are built
with diffusers and transformers from their configs, and their weights are read by
restorer.zoo.weights (safetensors, or PyTorch files through the tensor-only reader: nothing
in a model file is unpickled), then loaded strictly. torch, diffusers and transformers are
imported only when such a runner is built; importing this module needs none of them.

Each tile is upscaled by the pipeline's own denoising loop, written out here so that the
noise can come from outside: the starting latents (and the Stable Diffusion upscaler's
low-resolution noise) are cut from one noise field drawn for the whole image from the seed
(`noise_field`), passed to the tiling engine as per-pixel inputs. Overlapping tiles start
from the same noise where they overlap, so their outputs agree there and blend without a
seam, and the same seed gives the same image whatever the tile size. The loops follow the
pipelines' `__call__` step for step; tests/test_generative.py checks that they give the
pipelines' own output for the same noise.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import numpy as np

from restorer.archs.requirements import Requirements
from restorer.run.runner import NetworkRunner, RunnerInfo
from restorer.zoo.diffusers_folder import Component, components, read_index, weights_of
from restorer.zoo.layout import StoreError

EXTRA = "restorer[generative]"  # what to install for this backend
LDM = "LDMSuperResolutionPipeline"
SD_UPSCALE = "StableDiffusionUpscalePipeline"
# The per-pixel inputs a generative runner takes beside the image (cut into tiles with it).
LATENT_NOISE, IMAGE_NOISE = "latent_noise", "image_noise"


def missing_packages(pipeline: str | None = None) -> list[str]:
    """The Python packages this backend needs that are not installed (the text encoder and
    tokenizer of the Stable Diffusion upscaler come from transformers)."""
    needed = ["torch", "diffusers"] + ([] if pipeline == LDM else ["transformers"])
    return [name for name in needed if find_spec(name) is None]


def install_line(missing: list[str]) -> str:
    return f"generative upscaling needs {', '.join(missing)}, not installed: pip install '{EXTRA}'"


@dataclass(frozen=True)
class Generation:
    """The settings of a generative run (the catalog's defaults, then the user's)."""

    seed: int = 0
    steps: int = 50
    guidance: float = 9.0  # classifier-free guidance (the SD upscaler; 1 turns it off)
    noise_level: int = 20  # noise added to the low-resolution input (the SD upscaler)
    prompt: str = ""
    negative_prompt: str = ""
    eta: float = 0.0  # DDIM's eta: 0 is deterministic given the starting noise


GENERATION_KEYS = ("seed", "steps", "guidance", "noise_level", "prompt", "negative_prompt")


def generation_of(options: dict) -> Generation:
    """The settings a planned step carries (restorer.plan.request fills in the catalog's
    defaults and the user's choices)."""
    return Generation(**{k: options[k] for k in GENERATION_KEYS if k in options})


class DenoiseProgress:
    """Progress of a generative step in denoising steps over all tiles, through the tiling
    engine's (done, total) reports: tile k's step i is k * steps + i of tiles * steps. The
    cancel token is checked after every denoising step, not only between tiles."""

    def __init__(self, steps: int, progress: Callable[[int, int], None] | None, cancel=None):
        self.steps = max(1, steps)
        self.progress = progress
        self.cancel = cancel
        self.tiles = 1
        self.done = 0  # tiles finished

    def planned(self, tiles: int) -> None:
        self.tiles = max(1, tiles)

    def tile_done(self, done: int, total: int) -> None:
        self.done, self.tiles = done, max(1, total)
        self._report(0)

    def step(self, i: int, steps: int) -> None:
        from restorer.run.tiles import Cancelled

        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if i < steps:  # the tile's end is reported by the engine
            self._report(i)

    def _report(self, i: int) -> None:
        if self.progress:
            self.progress(self.done * self.steps + i, self.tiles * self.steps)


NOISE_BLOCK = 64  # the noise field is drawn in blocks of this many pixels, each from its own stream


def noise_field(seed: int, height: int, width: int, channels: int, origin: tuple[int, int] = (0, 0),
                stream: int = 0) -> np.ndarray:
    """HxWxC standard normal noise for the pixels [y0, y0 + height) x [x0, x0 + width) of an
    image (origin = (y0, x0)): the same at a pixel for a seed whatever part of the image is
    asked for (a preview's crop gets the whole run's noise there) and on every machine. Each
    NOISE_BLOCK square comes from its own generator, keyed by (seed, stream, block row,
    block column); `stream` tells the latent noise from the image noise."""
    y0, x0 = origin
    out = np.empty((height, width, channels), np.float32)
    for by in range(y0 // NOISE_BLOCK, -(-(y0 + height) // NOISE_BLOCK)):
        for bx in range(x0 // NOISE_BLOCK, -(-(x0 + width) // NOISE_BLOCK)):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, by, bx])))
            block = rng.standard_normal((NOISE_BLOCK, NOISE_BLOCK, channels), dtype=np.float32)
            top, left = by * NOISE_BLOCK, bx * NOISE_BLOCK
            ya, yb = max(y0, top), min(y0 + height, top + NOISE_BLOCK)
            xa, xb = max(x0, left), min(x0 + width, left + NOISE_BLOCK)
            out[ya - y0:yb - y0, xa - x0:xb - x0] = block[ya - top:yb - top, xa - left:xb - left]
    return out


# ------------------------------------------------------------------ building the pipeline

# What a component class must derive from, by (kind, library): nothing else is built from a name.
_BASES = {
    ("scheduler", "diffusers"): "SchedulerMixin",
    ("network", "diffusers"): "ModelMixin",
    ("network", "transformers"): "PreTrainedModel",
    ("tokenizer", "transformers"): "PreTrainedTokenizerBase",
}


def _component_class(comp: Component):
    module = importlib.import_module(comp.library)
    cls = getattr(module, comp.cls, None)
    if not isinstance(cls, type):
        raise StoreError(f"model_index.json: {comp.library} has no class {comp.cls} (for {comp.name}); "
                         f"a newer {comp.library} may: pip install -U {comp.library}")
    base = _BASES.get((comp.kind, comp.library))
    if base is None or not issubclass(cls, getattr(module, base)):
        raise StoreError(f"model_index.json: {comp.cls} is not a {comp.kind} class")
    return cls


def _load_network(folder: Path, comp: Component, cls, dtype):
    """A network component built from its config, its weights read safely and loaded strictly."""
    import torch

    from restorer.zoo.weights import load_state_dict

    sub = folder / comp.name
    if comp.library == "transformers":
        module = cls(cls.config_class.from_pretrained(sub))
    else:
        module = cls.from_config(cls.load_config(sub))
    path = weights_of(folder, comp)
    if path is None:
        raise StoreError(f"{sub}: no weights file")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_state_dict(path).items()}
    if hasattr(module, "_fix_state_dict_keys_on_load"):  # old attention names (query/key/value)
        module._fix_state_dict_keys_on_load(tensors)
    expected = module.state_dict()
    # buffers a checkpoint may or may not carry (CLIP's position ids) are not weights
    unexpected = [k for k in tensors if k not in expected]
    for key in [k for k in unexpected if k.endswith("position_ids")]:
        tensors.pop(key)
    for key in [k for k in expected if k not in tensors and k.endswith("position_ids")]:
        tensors[key] = expected[key]
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "tensor names or shapes differ"
        detail = " ".join(str(e).split())[:300]
        raise StoreError(f"{path}: does not fit {comp.cls} as its config describes it ({first} {detail})") from None
    return (module if dtype == torch.float32 else module.to(dtype)).eval()


def load_pipeline(folder: Path, device: str = "cpu", dtype=None):
    """The diffusers pipeline of a store folder, on `device` ("cpu" or "cuda") in `dtype`."""
    import diffusers
    import torch

    dtype = dtype or torch.float32
    index = read_index(folder)
    parts = {}
    for comp in components(index):
        cls = _component_class(comp)
        if comp.kind == "scheduler":
            parts[comp.name] = cls.from_config(cls.load_config(folder / comp.name))
        elif comp.kind == "tokenizer":
            parts[comp.name] = cls.from_pretrained(folder / comp.name)  # vocabulary files only
        else:
            parts[comp.name] = _load_network(folder, comp, cls, dtype).to(device)
    pipeline_cls = getattr(diffusers, index["_class_name"])
    for name, value in index.items():  # plain settings of the pipeline (max_noise_level)
        if not name.startswith("_") and isinstance(value, (int, float)) and not isinstance(value, bool):
            parts[name] = value
    for optional in getattr(pipeline_cls, "_optional_components", []):
        parts.setdefault(optional, None)
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # e.g. "no safety checker": not what restorer is for
    pipe = pipeline_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ the denoising loops

StepFn = Callable[[int, int], None]  # (denoising steps done, steps in all), for one tile


def upscale_ldm(pipe, image, latents, g: Generation, on_step: StepFn | None = None):
    """LDMSuperResolutionPipeline's loop: `image` NCHW in [-1, 1], `latents` the starting
    noise (N, unet.in_channels / 2, H, W); returns NCHW in [-1, 1], scale times larger."""
    import torch

    scheduler = pipe.scheduler
    scheduler.set_timesteps(g.steps, device=image.device)
    latents = latents * scheduler.init_noise_sigma
    kwargs = _step_kwargs(scheduler, g)
    with torch.inference_mode():
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(torch.cat([latents, image], dim=1), t)
            noise_pred = pipe.unet(model_input, t).sample
            latents = scheduler.step(noise_pred, t, latents, **kwargs).prev_sample
            if on_step:
                on_step(i + 1, g.steps)
        out = pipe.vqvae.decode(latents).sample
    return torch.clamp(out, -1.0, 1.0)


def _step_kwargs(scheduler, g: Generation) -> dict:
    """eta for the schedulers that take it (DDIM), as the pipelines pass it."""
    return {"eta": g.eta} if "eta" in inspect.signature(scheduler.step).parameters else {}


def encode_prompt(pipe, g: Generation, device):
    """(prompt embeddings, negative ones or None) as the SD upscaler encodes them."""
    import torch

    guided = g.guidance > 1.0
    with torch.inference_mode():
        embeds, negative = pipe.encode_prompt(g.prompt, device, 1, guided, g.negative_prompt or None)
    return embeds, (negative if guided else None)


def upscale_sd(pipe, image, latents, image_noise, g: Generation, embeds=None, on_step: StepFn | None = None):
    """StableDiffusionUpscalePipeline's loop: `image` NCHW in [-1, 1], `latents` and
    `image_noise` the starting noise (N, vae latent channels, H, W) and (N, 3, H, W)."""
    import torch

    device = image.device
    embeds, negative = embeds if embeds is not None else encode_prompt(pipe, g, device)
    guided = negative is not None
    if guided:
        embeds = torch.cat([negative, embeds])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(g.steps, device=device)
    level = torch.tensor([g.noise_level], dtype=torch.long, device=device)
    image = pipe.low_res_scheduler.add_noise(image.to(embeds.dtype), image_noise.to(embeds.dtype), level)
    copies = 2 if guided else 1
    image = torch.cat([image] * copies)
    level = torch.cat([level] * image.shape[0])
    latents = latents.to(embeds.dtype) * scheduler.init_noise_sigma
    kwargs = _step_kwargs(scheduler, g)
    with torch.inference_mode():
        for i, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents] * copies)
            model_input = scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input, image], dim=1)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds, class_labels=level,
                                   return_dict=False)[0]
            if guided:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + g.guidance * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents, **kwargs, return_dict=False)[0]
            if on_step:
                on_step(i + 1, g.steps)
        vae = pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        decoder = vae.to(torch.float32) if upcast else vae
        latents = latents.to(next(iter(decoder.post_quant_conv.parameters())).dtype)
        out = decoder.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        if upcast:
            vae.to(torch.float16)
    return torch.clamp(out.float(), -1.0, 1.0)


# ------------------------------------------------------------------ the runner


def torch_device(device: str) -> tuple[str, str]:
    """(torch device, what to report) for restorer's --device: CUDA when asked for or, with
    "auto", when there is one; else the CPU."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", "torch:cuda"
    if device not in ("auto", "cpu"):
        from restorer.run.onnx import DEVICE_WARNING

        why = "PyTorch sees no CUDA device" if device == "cuda" else f"diffusion pipelines run in PyTorch, not on {device}"
        logging.getLogger("restorer").warning(f"--device {device}: {why}; running on the CPU",
                                              extra={DEVICE_WARNING: True})
    return "cpu", "torch:cpu"


class DiffusionRunner(NetworkRunner):
    """A diffusers pipeline over tiles. `generation` (seed, steps, prompt...) and `on_step`
    (progress and cancel, per denoising step) are set by whoever runs a step; the tiling
    engine passes each tile's cut of the noise field as `latent_noise` (and `image_noise`)."""

    def __init__(self, folder: Path, info: RunnerInfo, needs: Requirements, device: str = "auto",
                 half: bool = False):
        import torch

        self.device, provider = torch_device(device)
        # fp16 only on CUDA and where the catalog says the pipeline is safe in it; the CPU
        # runs fp32 (fp16 there is slower and loses precision)
        self.dtype = torch.float16 if half and self.device == "cuda" else torch.float32
        info.backend, info.provider = "diffusers", provider + (":fp16" if self.dtype == torch.float16 else "")
        self.pipe = load_pipeline(folder, self.device, self.dtype)
        self.kind = type(self.pipe).__name__
        inputs = (LATENT_NOISE,) if self.kind == LDM else (LATENT_NOISE, IMAGE_NOISE)
        super().__init__(info, needs.with_(extra_inputs=inputs))
        self.generation = Generation()
        self.on_step: StepFn | None = None
        self._embeds: tuple | None = None  # the prompt's embeddings, for the prompt they encode
        self._embedded: tuple | None = None

    @property
    def latent_channels(self) -> int:
        if self.kind == LDM:
            return self.pipe.unet.config.in_channels // 2
        return self.pipe.vae.config.latent_channels

    def noise_channels(self) -> dict[str, int]:
        """The per-pixel noise inputs this pipeline takes, and their channels."""
        out = {LATENT_NOISE: self.latent_channels}
        if self.kind != LDM:
            out[IMAGE_NOISE] = 3
        return out

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        missing = [name for name in self.noise_channels() if name not in inputs]
        if missing:
            raise ValueError(f"{self.info.model}: the tiling engine passed no {', '.join(missing)}")
        g = self.generation
        on = {"device": self.device, "dtype": self.dtype}
        image = torch.from_numpy(batch).to(**on) * 2.0 - 1.0
        latents = torch.from_numpy(inputs[LATENT_NOISE]).to(**on)
        if self.kind == LDM:
            out = upscale_ldm(self.pipe, image, latents, g, self.on_step)
        else:
            key = (g.prompt, g.negative_prompt, g.guidance > 1.0)
            if self._embeds is None or self._embedded != key:
                self._embeds, self._embedded = encode_prompt(self.pipe, g, self.device), key
            noise = torch.from_numpy(inputs[IMAGE_NOISE]).to(**on)
            out = upscale_sd(self.pipe, image, latents, noise, g, self._embeds, self.on_step)
        return ((out.float() + 1.0) / 2.0).cpu().numpy()

    def close(self) -> None:
        self.pipe = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

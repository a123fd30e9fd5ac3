"""Tiny diffusers pipelines with random weights, built from configs offline (the tokenizer
from vocabulary files written here): the same classes and layout as the released
ldm-super-resolution-4x-openimages and stable-diffusion-x4-upscaler folders, a few
thousand parameters instead of hundreds of millions, 4x like the real ones (three decoder
blocks)."""

from __future__ import annotations

import json
import string
from pathlib import Path


def tiny_ldm(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, layers_per_block=1,
                    block_out_channels=(16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, num_vq_embeddings=32, norm_num_groups=8)
    # the released scheduler config (CompVis/ldm-super-resolution-4x-openimages)
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=True, steps_offset=1, num_train_timesteps=1000)
    LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def write_tokenizer_files(folder: Path) -> Path:
    """A CLIP byte-level BPE vocabulary of single characters (no merges): enough to tokenise
    any lower-case prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ",.!-'")
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"] + chars + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_sd_upscaler(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_dir = write_tokenizer_files(folder.parent / f".{folder.name}-vocab")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8, num_class_embeds=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, scaling_factor=0.08333)
    # the released schedulers (stabilityai/stable-diffusion-x4-upscaler)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", clip_sample=True,
                            variance_type="fixed_small")
    pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          low_res_scheduler=low_res, scheduler=scheduler, max_noise_level=350)
    pipe.save_pretrained(folder)
    # the released folder keeps the vocabulary files, not a tokenizer.json
    for name in ("vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).write_bytes((vocab_dir / name).read_bytes())
    (folder / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return folder

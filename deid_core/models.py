"""Rectified-flow models (SD3 / SD3.5 / FLUX.1) loaded from a local directory in diffusers layout.

The gateway never downloads weights: a route names a directory, `verify_model_dir` checks it at
start-up and names everything that is missing, and `load_model` reads it with
`local_files_only=True`. Tests and demos use a tiny random model made by `build_tiny_model`, fully
offline (its tokenizers are built in code), which loads through the very same path. A tiny model
carries a marker file, and everything made with it says so (`is_test_model`, `TEST_MODEL_NOTICE`).

Public contract (other packages code against these names)::

    report = verify_model_dir(path)                  # ConfigError naming what is missing
    model = load_model(path, device="cpu" | "cuda", dtype=None)
    model.family            # "sd3" (SD3, SD3.5) or "flux" (FLUX.1)
    model.is_test_model     # True for a directory made by build_tiny_model
    model.identity()        # "<dir name>@<config hash>", for provenance and logs
    build_tiny_model(directory, family="sd3")
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid_core.errors import ConfigError
from deid_core.model_dir import (
    FAMILY_PIPELINES,
    REQUIRED_COMPONENTS,
    TEST_MODEL_MARKER,
    TEST_MODEL_NOTICE,
    Family,
    ModelDirReport,
    ensure_new_model_dir,
    verify_model_dir,
)

__all__ = [
    "FAMILY_PIPELINES",
    "REQUIRED_COMPONENTS",
    "TEST_MODEL_MARKER",
    "TEST_MODEL_NOTICE",
    "Family",
    "ModelDirReport",
    "RectifiedFlowModel",
    "build_tiny_model",
    "build_tiny_pipeline",
    "load_model",
    "verify_model_dir",
]


def _default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on a GPU (tensor cores, and the range fp16 lacks for T5); fp32 on a CPU, where bf16
    # matmuls are slower without AMX.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class RectifiedFlowModel:
    """One loaded SD3/SD3.5/FLUX model: the transformer, the VAE, the scheduler's configuration and,
    until released, the text encoders. Holds no per-edit state, so several FlowEditors (one per
    route, plus the lesion gate's) can share it."""

    def __init__(
        self,
        pipeline: Any,
        *,
        name: str,
        config_hash: str,
        is_test_model: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        class_name = type(pipeline).__name__
        family = next((f for f, cls in FAMILY_PIPELINES.items() if cls == class_name), None)
        if family is None:
            raise ConfigError(f"unsupported pipeline class {class_name}")
        self.family: Family = family  # type: ignore[assignment]
        self.name = name
        self.config_hash = config_hash
        self.is_test_model = is_test_model
        self.device = device
        self.dtype = dtype
        self._pipeline = pipeline
        self._prompt_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._released = False
        self._compiled: Any = None
        vae_cfg = pipeline.vae.config
        #: pixels per latent cell (8 for SD3 and FLUX)
        self.vae_scale_factor: int = 2 ** (len(vae_cfg.block_out_channels) - 1)
        self.latent_channels: int = int(vae_cfg.latent_channels)
        self._scaling = float(vae_cfg.scaling_factor)
        self._shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)
        patch = 2 if family == "flux" else int(pipeline.transformer.config.patch_size)
        #: image height and width must be multiples of this (VAE factor x patch / 2x2 packing)
        self.alignment: int = self.vae_scale_factor * patch
        max_patches = getattr(pipeline.transformer.config, "pos_embed_max_size", None)
        #: the largest image side the transformer accepts (None: no fixed limit, e.g. FLUX's RoPE)
        self.max_image_side: int | None = (
            int(max_patches) * self.alignment if family == "sd3" and max_patches else None
        )

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Any,
        *,
        name: str,
        is_test_model: bool,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> RectifiedFlowModel:
        """Wrap a pipeline built in memory (benchmarks build full-size architectures with random
        weights this way). The config hash covers the components' configurations."""
        dev = torch.device(device)
        dt = dtype or _default_dtype(dev)
        pipeline.to(device=dev, dtype=dt)
        digest = hashlib.sha256()
        for comp in ("transformer", "vae", "scheduler"):
            cfg = dict(getattr(pipeline, comp).config)
            digest.update(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8"))
        return cls(
            pipeline,
            name=name,
            config_hash=digest.hexdigest(),
            is_test_model=is_test_model,
            device=dev,
            dtype=dt,
        )

    # --- identity and provenance -------------------------------------------------------------

    def identity(self) -> str:
        """`<directory name>@<first 12 hex of the config hash>`: which model made an output."""
        return f"{self.name}@{self.config_hash[:12]}"

    @property
    def transformer(self) -> Any:
        return self._compiled if self._compiled is not None else self._pipeline.transformer

    @property
    def transformer_config(self) -> Any:
        return self._pipeline.transformer.config

    @property
    def scheduler_config(self) -> Any:
        return self._pipeline.scheduler.config

    @property
    def vae(self) -> Any:
        return self._pipeline.vae

    def compile_transformer(self, mode: str | None = None) -> None:
        """Wrap the transformer in torch.compile (shared by every editor of this model). The first
        edit at each new image size then pays the compilation."""
        if self._compiled is None:
            self._compiled = torch.compile(self._pipeline.transformer, mode=mode, dynamic=False)

    # --- text ---------------------------------------------------------------------------------

    @property
    def text_encoders_released(self) -> bool:
        return self._released

    def encode_prompt(
        self, text: str, max_sequence_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence embeddings (1, L, D), pooled embeddings (1, P)) of one prompt, in the model's
        dtype on its device; cached, so every editor with the same prompt shares one encoding.

        An empty text is the unconditional embedding of classifier-free guidance."""
        key = (text, max_sequence_length)
        cached = self._prompt_cache.get(key)
        if cached is not None:
            return cached
        if self._released:
            raise ConfigError(
                f"the text encoders of model {self.identity()} were released; create every "
                "FlowEditor (every route's prompts and the lesion gate's) before releasing them"
            )
        pipe = self._pipeline
        with torch.inference_mode():
            if self.family == "sd3":
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=text,
                    prompt_2=None,
                    prompt_3=None,
                    device=self.device,
                    do_classifier_free_guidance=False,
                    max_sequence_length=max_sequence_length,
                )
            else:
                embeds, pooled, _ = pipe.encode_prompt(
                    prompt=text,
                    prompt_2=None,
                    device=self.device,
                    max_sequence_length=max_sequence_length,
                )
        result = (
            embeds.to(device=self.device, dtype=self.dtype),
            pooled.to(device=self.device, dtype=self.dtype),
        )
        self._prompt_cache[key] = result
        return result

    def release_text_encoders(self) -> None:
        """Free the text encoders (T5-XXL alone is ~9 GB in bf16). Prompts already encoded stay
        usable; encoding a new one afterwards raises ConfigError. Safe to call twice."""
        if self._released:
            return
        pipe = self._pipeline
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if hasattr(pipe, name):
                setattr(pipe, name, None)
        self._released = True
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- latents ------------------------------------------------------------------------------

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised latents (fp32) of images in [-1, 1], (N, 3, H, W) with H, W multiples of
        `alignment`. Uses the mode of the latent distribution: deterministic, as FlowEdit wants."""
        vae = self._pipeline.vae
        latent = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist.mode()
        return (latent.float() - self._shift) * self._scaling

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (fp32, unclamped) from normalised latents."""
        vae = self._pipeline.vae
        raw = latents / self._scaling + self._shift
        return vae.decode(raw.to(vae.dtype), return_dict=False)[0].float()

    def sigma_schedule(
        self, num_steps: int, latent_height: int, latent_width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps (T,), sigmas (T+1,) ending in 0) as the model's own pipeline would use them:
        SD3's fixed shift (or its dynamic shift where configured), FLUX's resolution-dependent shift
        mu from diffusers' `calculate_shift`. A fresh scheduler per call: no shared state."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self._pipeline.scheduler.config
        scheduler = type(self._pipeline.scheduler).from_config(cfg)
        patch = 2 if self.family == "flux" else int(self.transformer_config.patch_size)
        seq_len = (latent_height // patch) * (latent_width // patch)
        mu = calculate_shift(
            seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        if self.family == "flux":
            sigmas = (
                None if cfg.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
            )
            scheduler.set_timesteps(num_steps, device=self.device, sigmas=sigmas, mu=mu)
        elif cfg.get("use_dynamic_shifting"):
            scheduler.set_timesteps(num_steps, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(num_steps, device=self.device)
        return scheduler.timesteps.float(), scheduler.sigmas.float()


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> RectifiedFlowModel:
    """Load a verified local model directory, never touching a hub (`local_files_only=True`; the
    gateway also sets HF_HUB_OFFLINE). `dtype` defaults to bf16 on CUDA and fp32 on CPU."""
    report = verify_model_dir(path)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but this machine has no usable CUDA device")
    dt = dtype or _default_dtype(dev)
    import diffusers

    pipeline_cls = getattr(diffusers, FAMILY_PIPELINES[report.family])
    index = json.loads((report.path / "model_index.json").read_text("utf-8"))
    # Components listed as [null, null] must be passed as None explicitly, or diffusers looks for
    # them (and, for SD3's T5, would try a download).
    absent = {
        name: None
        for name, spec in index.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and (len(spec) != 2 or spec[1] is None)
    }
    # diffusers renamed torch_dtype to dtype (the old name warns); use whichever it knows.
    from diffusers.utils import deprecation_utils

    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipeline = pipeline_cls.from_pretrained(
            str(report.path), local_files_only=True, **{dtype_kw: dt}, **absent
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"model directory {report.path} could not be loaded: {type(exc).__name__}: "
            f"{str(exc)[:300]}"
        ) from exc
    pipeline.to(dev)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    return RectifiedFlowModel(
        pipeline,
        name=report.path.resolve().name,
        config_hash=report.config_hash,
        is_test_model=report.is_test_model,
        device=dev,
        dtype=dt,
    )


# --- the tiny offline test model ----------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (printable bytes map to themselves, the rest to
    code points from 256 up), so any text tokenizes without an unknown token."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _tiny_clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    # A few merges so that the BPE path is exercised, not only single characters.
    for left, right in (("s", "k"), ("sk", "i"), ("ski", "n</w>"), ("l", "e"), ("le", "s")):
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # transformers 5 wants merges as pairs when given in code, though its annotation says strings
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def _tiny_t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in letters]
    pieces += [("▁" + c, -1.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _tiny_clip_config(tokenizer: Any, hidden: int) -> Any:
    from transformers import CLIPTextConfig

    vocab = tokenizer.get_vocab()
    return CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(vocab),
        projection_dim=hidden,
        hidden_act="gelu",
        max_position_embeddings=77,
    )


def _tiny_t5(tokenizer: Any, width: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer.get_vocab()),
            d_model=width,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _tiny_vae(scaling: float, shift: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling,
        shift_factor=shift,
    )


def build_tiny_pipeline(
    family: str = "sd3",
    *,
    with_t5: bool = True,
    transformer: Any = None,
    vae: Any = None,
    clip_widths: tuple[int, int] = (32, 32),
    t5_width: int = 32,
) -> Any:
    """A random pipeline of the family's real architecture, built in memory and offline: by default
    tiny (~300k parameters). Benchmarks pass a full-size `transformer` and `vae` and the real text
    widths (SD3: CLIP 768 and 1280, T5 4096; FLUX: CLIP 768, T5 4096) so that every tensor the
    transformer sees has its real shape, while the text encoders stay one-layer toys. Callers seed
    torch's generator themselves if they need fixed weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    clip_tok = _tiny_clip_tokenizer()
    t5_tok = _tiny_t5_tokenizer()
    if family == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection

        if transformer is None:
            transformer = SD3Transformer2DModel(
                sample_size=32,
                patch_size=2,
                in_channels=16,
                num_layers=2,
                attention_head_dim=8,
                num_attention_heads=4,
                joint_attention_dim=t5_width,
                caption_projection_dim=32,
                pooled_projection_dim=sum(clip_widths),
                out_channels=16,
                pos_embed_max_size=96,
            )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae if vae is not None else _tiny_vae(1.5305, 0.0609),
            text_encoder=CLIPTextModelWithProjection(_tiny_clip_config(clip_tok, clip_widths[0])),
            tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config(clip_tok, clip_widths[1])),
            tokenizer_2=clip_tok,
            text_encoder_3=_tiny_t5(t5_tok, t5_width) if with_t5 else None,
            tokenizer_3=t5_tok if with_t5 else None,
        )
    if family == "flux":
        from diffusers import FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel

        if transformer is None:
            transformer = FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=t5_width,
                pooled_projection_dim=clip_widths[0],
                guidance_embeds=True,
                axes_dims_rope=(4, 6, 6),
            )
        scheduler = FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256,
            base_shift=0.5,
            max_image_seq_len=4096,
            max_shift=1.15,
            shift=3.0,
            use_dynamic_shifting=True,
        )
        return FluxPipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae if vae is not None else _tiny_vae(0.3611, 0.1159),
            text_encoder=CLIPTextModel(_tiny_clip_config(clip_tok, clip_widths[0])),
            tokenizer=clip_tok,
            text_encoder_2=_tiny_t5(t5_tok, t5_width),
            tokenizer_2=t5_tok,
        )
    raise ConfigError(f"unknown model family {family!r}; expected one of: sd3, flux")


def build_tiny_model(
    directory: str | Path, family: str = "sd3", *, seed: int = 0, with_t5: bool = True
) -> Path:
    """Write a tiny random model of `family` ("sd3" or "flux") to `directory` in diffusers layout,
    fully offline, with the test-model marker. The same seed gives the same weights. Refuses a
    directory that exists and is not empty, so a real model is never overwritten."""
    if family not in FAMILY_PIPELINES:
        raise ConfigError(f"unknown model family {family!r}; expected one of: sd3, flux")
    root = ensure_new_model_dir(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = build_tiny_pipeline(family, with_t5=with_t5)
    root.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(root), safe_serialization=True)
    marker = {
        "test_model": True,
        "family": family,
        "seed": seed,
        "notice": TEST_MODEL_NOTICE,
    }
    (root / TEST_MODEL_MARKER).write_text(json.dumps(marker, indent=2) + "\n", "utf-8")
    return root

"""FlowEdit: inversion-free, training-free image editing on a rectified-flow transformer.

Kulikov et al., "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow Models" (2024).
Instead of inverting the photograph to noise and regenerating it (slow, and it drifts), FlowEdit
walks a direct path from the source image to the edited one. For each of the last `n_max` of `T`
steps, at noise level sigma:

    zs = (1 - sigma) * x_src + sigma * eps          fresh eps each step (n_avg draws averaged)
    zt = zs + (z_edit - x_src)                      the edited path, shifted by the same offset
    z_edit += (sigma_next - sigma) * [V(zt, target) - V(zs, source)]     Euler, in fp32

each velocity with its own classifier-free guidance (SD3) or guidance embedding (FLUX, which is
guidance-distilled). The last `n_min` steps, if any, sample the target prompt plainly from the
noised edit. The first `T - n_max` steps are skipped: they would change the layout.

Why this shape of code: the prompt embeddings of a route never change, so `FlowEditor` computes
them once, and the model's large text encoder can then be freed. For SD3 the four evaluations of a
step (source unconditional, source, target unconditional, target) of every image in the batch go
into one transformer call; for FLUX the source and target evaluations share one call. Noise comes
from one `torch.Generator` per image, seeded by the caller (see `deid_core.seeds`), so an image
gets the same noise whatever else is in its batch (on the model's device: a CUDA generator on a
GPU, so a retry on the same kind of device and software gives the same pixels).

Public contract::

    params = FlowEditParams.defaults_for(model.family)
    editor = FlowEditor(model, params, source_prompt, target_prompt)
    out = editor.edit(images_uint8_NHW3, seeds)       # same shape back
    editor.release_text_encoders()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.models import TEST_MODEL_NOTICE, RectifiedFlowModel

#: Seeds must fit torch.Generator.manual_seed (uint64); deid_core.seeds makes them < 2**63.
_MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class FlowEditParams:
    """Settings of one FlowEdit; validated when constructed (ConfigError names the field)."""

    #: T: steps of the full schedule
    num_steps: int = 50
    #: FlowEdit runs on the last n_max of the T steps; 0 returns the input untouched
    n_max: int = 33
    #: the last n_min steps sample the target prompt plainly (0 in the published settings)
    n_min: int = 0
    #: noise draws averaged per step
    n_avg: int = 1
    source_guidance: float = 3.5
    target_guidance: float = 13.5
    #: the unconditional prompt of classifier-free guidance (SD3 only)
    negative_prompt: str = ""
    #: T5 tokens (SD3 pads to 256, FLUX.1-dev to 512)
    max_sequence_length: int = 256
    #: images per transformer call (SD3 runs 4 rows per image in that call, FLUX 2)
    batch_size: int = 4
    #: scale images whose longer side exceeds this down for the edit, and the result back up;
    #: None edits at the native size
    max_side: int | None = None
    #: wrap the transformer in torch.compile (worth it on a GPU serving many images of one size)
    compile: bool = False

    @classmethod
    def defaults_for(cls, family: str, **overrides: Any) -> FlowEditParams:
        """The published settings of the family (SD3: T=50, n_max=33, guidance 3.5/13.5;
        FLUX.1-dev: T=28, n_max=24, 1.5/5.5), with `overrides` applied."""
        if family == "sd3":
            base = cls()
        elif family == "flux":
            base = cls(
                num_steps=28,
                n_max=24,
                source_guidance=1.5,
                target_guidance=5.5,
                max_sequence_length=512,
            )
        else:
            raise ConfigError(f"unknown model family {family!r}; expected one of: sd3, flux")
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"flowedit.{name}: {why}")

        for name in ("num_steps", "n_max", "n_min", "n_avg", "batch_size", "max_sequence_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(name, f"must be an integer, got {type(value).__name__}")
        if self.num_steps < 1:
            raise bad("num_steps", "must be at least 1")
        if not 0 <= self.n_max <= self.num_steps:
            raise bad("n_max", f"must be between 0 and num_steps ({self.num_steps})")
        if not 0 <= self.n_min <= self.n_max:
            raise bad("n_min", f"must be between 0 and n_max ({self.n_max})")
        if self.n_avg < 1:
            raise bad("n_avg", "must be at least 1")
        if self.batch_size < 1:
            raise bad("batch_size", "must be at least 1")
        if self.max_sequence_length < 1:
            raise bad("max_sequence_length", "must be at least 1")
        if self.max_side is not None and self.max_side < 16:
            raise bad("max_side", "must be at least 16 (or unset)")
        for name in ("source_guidance", "target_guidance"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise bad(name, "must be a finite, non-negative number")

    def describe(self) -> str:
        return (
            f"T={self.num_steps}, n_max={self.n_max}, n_min={self.n_min}, n_avg={self.n_avg}, "
            f"guidance {self.source_guidance:g}/{self.target_guidance:g}"
        )


class _Velocity(Protocol):
    """Guided velocities of one family, in the unpacked latent layout (N, C, h, w), fp32."""

    def pair(
        self, zs: torch.Tensor, zt: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def target(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...


class _SD3Velocity:
    """SD3 / SD3.5: classifier-free guidance, all four evaluations of a step in one call."""

    def __init__(self, model: RectifiedFlowModel, params: FlowEditParams, src: str, tgt: str):
        length = params.max_sequence_length
        self._model = model
        self._gs = params.source_guidance
        self._gt = params.target_guidance
        self._neg = model.encode_prompt(params.negative_prompt, length)
        self._src = model.encode_prompt(src, length)
        self._tgt = model.encode_prompt(tgt, length)
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _conditioning(self, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings for the rows of one call, built once per batch size."""
        key = (kind, n)
        if key not in self._cache:
            order = (
                [self._neg, self._src, self._neg, self._tgt]
                if kind == "pair"
                else [self._neg, self._tgt]
            )
            embeds = torch.cat([e.expand(n, -1, -1) for e, _ in order])
            pooled = torch.cat([p.expand(n, -1) for _, p in order])
            self._cache[key] = (embeds, pooled)
        return self._cache[key]

    def _run(self, latents: torch.Tensor, timestep: torch.Tensor, kind: str) -> torch.Tensor:
        rows = latents.shape[0]
        embeds, pooled = self._conditioning(kind, rows // (4 if kind == "pair" else 2))
        out = self._model.transformer(
            hidden_states=latents.to(self._model.dtype),
            timestep=timestep.expand(rows),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return out.float()

    def pair(
        self, zs: torch.Tensor, zt: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._run(torch.cat([zs, zs, zt, zt]), timestep, "pair")
        src_u, src_c, tgt_u, tgt_c = out.chunk(4)
        return src_u + self._gs * (src_c - src_u), tgt_u + self._gt * (tgt_c - tgt_u)

    def target(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        tgt_u, tgt_c = self._run(torch.cat([z, z]), timestep, "target").chunk(2)
        return tgt_u + self._gt * (tgt_c - tgt_u)


class _FluxVelocity:
    """FLUX.1: guidance-distilled (the guidance scale is an input embedding, no CFG doubling);
    packed 2x2 latents with positional ids; source and target evaluations in one call."""

    def __init__(self, model: RectifiedFlowModel, params: FlowEditParams, src: str, tgt: str):
        length = params.max_sequence_length
        self._model = model
        self._src = model.encode_prompt(src, length)
        self._tgt = model.encode_prompt(tgt, length)
        self._gs = params.source_guidance
        self._gt = params.target_guidance
        self._guided = bool(model.transformer_config.guidance_embeds)
        self._txt_ids = torch.zeros(
            self._src[0].shape[1], 3, device=model.device, dtype=model.dtype
        )
        self._cache: dict[
            tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
        ] = {}
        self._img_ids: dict[tuple[int, int], torch.Tensor] = {}

    def _conditioning(
        self, kind: str, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        key = (kind, n)
        if key not in self._cache:
            order = (
                [(self._src, self._gs), (self._tgt, self._gt)]
                if kind == "pair"
                else [(self._tgt, self._gt)]
            )
            embeds = torch.cat([e.expand(n, -1, -1) for (e, _), _ in order])
            pooled = torch.cat([p.expand(n, -1) for (_, p), _ in order])
            guidance = (
                torch.tensor([g for _, g in order for _ in range(n)], device=self._model.device)
                if self._guided
                else None
            )
            self._cache[key] = (embeds, pooled, guidance)
        return self._cache[key]

    def _ids(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._img_ids:
            ids = torch.zeros(h // 2, w // 2, 3)
            ids[..., 1] = torch.arange(h // 2)[:, None]
            ids[..., 2] = torch.arange(w // 2)[None, :]
            self._img_ids[(h, w)] = ids.reshape(-1, 3).to(self._model.device, self._model.dtype)
        return self._img_ids[(h, w)]

    @staticmethod
    def _pack(z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return z.reshape(n, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def _unpack(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, _, c4 = z.shape
        z = z.view(n, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return z.reshape(n, c4 // 4, h, w)

    def _run(
        self, latents: torch.Tensor, timestep: torch.Tensor, kind: str, n: int
    ) -> torch.Tensor:
        _, _, h, w = latents.shape
        embeds, pooled, guidance = self._conditioning(kind, n)
        rows = latents.shape[0]
        dtype = self._model.dtype
        out = self._model.transformer(
            hidden_states=self._pack(latents).to(dtype),
            timestep=(timestep / 1000).expand(rows).to(dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=self._txt_ids,
            img_ids=self._ids(h, w),
            return_dict=False,
        )[0]
        return self._unpack(out.float(), h, w)

    def pair(
        self, zs: torch.Tensor, zt: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = zs.shape[0]
        v_src, v_tgt = self._run(torch.cat([zs, zt]), timestep, "pair", n).chunk(2)
        return v_src, v_tgt

    def target(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self._run(z, timestep, "target", z.shape[0])


class FlowEditor:
    """FlowEdit of one prompt pair on one model. The prompt embeddings are computed once, here;
    `edit` can then be called for any number of batches of any size."""

    def __init__(
        self,
        model: RectifiedFlowModel,
        params: FlowEditParams,
        source_prompt: str,
        target_prompt: str,
    ) -> None:
        if not isinstance(source_prompt, str) or not isinstance(target_prompt, str):
            raise ConfigError("flowedit: the source and target prompts must be text")
        self.model = model
        self.params = params
        self.source_prompt = source_prompt
        self.target_prompt = target_prompt
        self._velocity: _Velocity = (
            _SD3Velocity(model, params, source_prompt, target_prompt)
            if model.family == "sd3"
            else _FluxVelocity(model, params, source_prompt, target_prompt)
        )
        if params.compile:
            model.compile_transformer()

    def release_text_encoders(self) -> None:
        """Free the model's text encoders; this editor keeps working. Other editors of the same
        model must have been created before (see RectifiedFlowModel.release_text_encoders)."""
        self.model.release_text_encoders()

    def derivation_description(self) -> str:
        """One line for the Derivation Description of an edited instance: what made it."""
        text = (
            f"FlowEdit (Kulikov et al. 2024) identity edit on {self.model.identity()}, "
            f"{self.params.describe()}"
        )
        if self.model.is_test_model:
            text += f"; {TEST_MODEL_NOTICE}"
        return text

    # --- input checks -------------------------------------------------------------------------

    def _check(self, images: np.ndarray, seeds: Sequence[int] | None) -> list[int]:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InvalidInputError("flowedit: images must be a numpy array of uint8")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidInputError(
                f"flowedit: images must have shape (N, H, W, 3), got {tuple(images.shape)}"
            )
        n, h, w, _ = images.shape
        if n == 0 or h == 0 or w == 0:
            raise InvalidInputError(f"flowedit: empty image batch {tuple(images.shape)}")
        if seeds is None:
            return []
        seed_list = list(seeds)
        if len(seed_list) != n:
            raise InvalidInputError(f"flowedit: {n} images but {len(seed_list)} seeds")
        for s in seed_list:
            if (
                isinstance(s, bool)
                or not isinstance(s, int | np.integer)
                or not 0 <= s <= _MAX_SEED
            ):
                raise InvalidInputError("flowedit: every seed must be an integer in [0, 2**64)")
        side = max(h, w)
        if self.params.max_side is not None:
            side = min(side, self.params.max_side)
        limit = self.model.max_image_side
        if limit is not None and _round_up(side, self.model.alignment) > limit:
            raise InvalidInputError(
                f"flowedit: images of {h}x{w} exceed what this model accepts ({limit} pixels a "
                "side); set max_side to edit them at a lower resolution"
            )
        return [int(s) for s in seed_list]

    # --- pixels <-> latents -------------------------------------------------------------------

    def _working_size(self, h: int, w: int) -> tuple[int, int]:
        limit = self.params.max_side
        if limit is None or max(h, w) <= limit:
            return h, w
        scale = limit / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def _to_latents(self, images: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Encode (N, H, W, 3) uint8 to normalised latents; returns the working size too."""
        _, h, w, _ = images.shape
        x = torch.tensor(images, device=self.model.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        wh, ww = self._working_size(h, w)
        if (wh, ww) != (h, w):
            x = F.interpolate(x, size=(wh, ww), mode="bicubic", antialias=True, align_corners=False)
        a = self.model.alignment
        pad_h, pad_w = _round_up(wh, a) - wh, _round_up(ww, a) - ww
        if pad_h or pad_w:
            # Edge replication: no artificial border for the model to "fix"; cropped off after.
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.model.encode_images(x), (wh, ww)

    def _to_pixels(self, latents: torch.Tensor, working: tuple[int, int], size: tuple[int, int]):
        x = self.model.decode_latents(latents)[:, :, : working[0], : working[1]]
        if working != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=False, align_corners=False)
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # --- the edit -----------------------------------------------------------------------------

    def edit(self, images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """Edit (N, H, W, 3) uint8 RGB images, one seed per image; returns the same shape.

        With n_max = 0 the input comes back unchanged (a copy, no VAE pass). The result for an
        image depends only on that image, its seed, the model and the parameters, not on the rest
        of its batch (up to floating-point batching effects on some GPUs)."""
        seed_list = self._check(images, seeds)
        if self.params.n_max == 0:
            return images.copy()
        out = np.empty_like(images)
        step = self.params.batch_size
        with torch.inference_mode():
            for start in range(0, images.shape[0], step):
                chunk = images[start : start + step]
                out[start : start + step] = self._edit_batch(chunk, seed_list[start : start + step])
        return out

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """The VAE round trip of the images through the same resizing and padding as `edit`: what
        an edit returns when the source and target prompts and guidance are equal."""
        self._check(images, None)
        out = np.empty_like(images)
        step = self.params.batch_size
        size = images.shape[1:3]
        with torch.inference_mode():
            for start in range(0, images.shape[0], step):
                latents, working = self._to_latents(images[start : start + step])
                out[start : start + step] = self._to_pixels(latents, working, size)
        return out

    def _edit_batch(self, images: np.ndarray, seeds: list[int]) -> np.ndarray:
        size = (images.shape[1], images.shape[2])
        x_src, working = self._to_latents(images)
        # One generator per image, on the model's device: drawing the noise on a CPU costs ~0.2 s
        # per 1024² image (33 draws of 1 MB). Same seed, device kind and torch give the same noise.
        generators = [torch.Generator(device=self.model.device).manual_seed(s) for s in seeds]
        z = self._flowedit(x_src, generators)
        return self._to_pixels(z, working, size)

    def _noise(self, like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        shape = like.shape[1:]
        draws = [
            torch.randn(shape, generator=g, dtype=torch.float32, device=like.device)
            for g in generators
        ]
        return torch.stack(draws)

    def _flowedit(self, x_src: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        p = self.params
        _, _, lh, lw = x_src.shape
        timesteps, sigmas = self.model.sigma_schedule(p.num_steps, lh, lw)
        total = len(timesteps)
        first = total - p.n_max
        switch = total - p.n_min
        z_edit = x_src.clone()
        for i in range(first, switch):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            v_delta = torch.zeros_like(x_src)
            for _ in range(p.n_avg):
                zs = (1 - sigma) * x_src + sigma * self._noise(x_src, generators)
                # zs + (z_edit - x_src), not z_edit + zs - x_src: the offset is exact (zero at the
                # start), so equal prompts give exactly zero velocity difference.
                zt = zs + (z_edit - x_src)
                v_src, v_tgt = self._velocity.pair(zs, zt, timesteps[i])
                v_delta += (v_tgt - v_src) / p.n_avg
            z_edit = z_edit + (sigma_next - sigma) * v_delta
        if p.n_min == 0:
            return z_edit
        # Plain sampling of the target for the last n_min steps, from the noised edit.
        sigma = sigmas[switch]
        xt_src = (1 - sigma) * x_src + sigma * self._noise(x_src, generators)
        z = xt_src + (z_edit - x_src)
        for i in range(switch, total):
            v = self._velocity.target(z, timesteps[i])
            z = z + (sigmas[i + 1] - sigmas[i]) * v
        return z


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple

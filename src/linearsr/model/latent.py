"""`DCAECodec`: SANA's deep-compression autoencoder (diffusers `AutoencoderDC`) as a LinearSR codec.

    codec = DCAECodec.from_local("dc-ae-f32c32-sana-1.1-diffusers/", expected_channels=32)
    z = codec.encode(image)      # image (B, 3, H, W) in [-1, 1] -> (B, 32, H/32, W/32), already * scaling_factor
    x = codec.decode(z)          # -> (B, 3, H, W), unclamped

Weights come from a local folder only (`config.json` + safetensors; a pipeline folder's `vae/` is found
too), read by the same no-pickle loader as the SANA importer (diffusers_folder.py). Needs the optional extra `linearsr[sana]`
(diffusers), imported only here.

Frozen and out of the checkpoints. The autoencoder's parameters are held outside the module tree: they
are not in `parameters()` or `state_dict()`, so optimizers, EMA, training states and model folders never
carry the (hundreds of MB of) codec weights, `train()` never switches it out of eval mode, and its weights
never require grad. `.to(device/dtype)` still reaches it (see `_apply`). Decoding is differentiable with
respect to its input (nothing is wrapped in no_grad).

Tiling. Images larger than `tile_size` pixels on a side are processed in overlapping tiles: encoding cuts
the image into tiles of `tile_size` px and blends the tile latents; decoding cuts the latent into tiles of
`tile_size / factor` cells and blends the decoded images. The blend is a weighted average whose weights
ramp linearly over the `tile_overlap` band, so where one tile covers the input the result is exactly the
untiled one. DC-AE's deeper stages use global linear attention, so a tiled result is close to, not equal
to, the untiled one. (diffusers' own `enable_tiling` blends one-sidedly with fixed 512/448 px tiles; this
implementation keeps the tile geometry a setting and needs nothing from the model but encoder/decoder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .codec import Codec
from .diffusers_folder import SanaImportError, find_component, load_weights, read_config

DCAE_DEFAULT_FACTOR = 32  # SANA's DC-AE (f32c32)


def dcae_factor(config: dict) -> int:
    """Spatial down-factor of an AutoencoderDC config: one 2x step between consecutive encoder stages."""
    blocks = config.get("encoder_block_out_channels", (128, 256, 512, 512, 1024, 1024))
    return 2 ** (len(blocks) - 1)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _ramp(length: int, band: int, left: bool, right: bool, like: torch.Tensor) -> torch.Tensor:
    """1-D blend weights: rising linearly over `band` cells on each side that has a neighbour, else 1."""
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    if band > 0:
        r = torch.arange(1, band + 1, dtype=like.dtype, device=like.device) / (band + 1)
        n = min(band, length)
        if left:
            w[:n] = torch.minimum(w[:n], r[:n])
        if right:
            w[length - n:] = torch.minimum(w[length - n:], r[:n].flip(0))
    return w


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                align: int = 1, ratio: float = 1.0) -> torch.Tensor:
    """Apply a spatial map `fn` (output size = input size * `ratio`) to `x` (B, C, H, W) in overlapping
    tiles of `tile` input cells, blended in the output with linear ramps over the overlap. `tile` and
    `overlap` are rounded down to multiples of `align` (H and W must be multiples of it)."""
    h, w = x.shape[-2:]
    if h % align or w % align:
        raise ValueError(f"size {h}x{w} is not a multiple of {align}")
    tile = max(align, tile // align * align)
    overlap = min(max(0, overlap // align * align), tile - align)
    if h <= tile and w <= tile:
        return fn(x)
    out = weight = None
    ys, xs = _starts(h, min(tile, h), overlap), _starts(w, min(tile, w), overlap)
    band = round(overlap * ratio)
    for y in ys:
        for x0 in xs:
            y1, x1 = min(y + tile, h), min(x0 + tile, w)
            piece = fn(x[..., y:y1, x0:x1])
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], round(h * ratio), round(w * ratio))
                weight = piece.new_zeros(1, 1, *out.shape[-2:])
            oy, ox = round(y * ratio), round(x0 * ratio)
            ph, pw = piece.shape[-2:]
            wy = _ramp(ph, band, y > 0, y1 < h, piece)
            wx = _ramp(pw, band, x0 > 0, x1 < w, piece)
            wt = wy[:, None] * wx[None, :]
            out[..., oy:oy + ph, ox:ox + pw] += piece * wt
            weight[..., oy:oy + ph, ox:ox + pw] += wt
    return out / weight


class DCAECodec(Codec):
    """Images <-> DC-AE latents (times the autoencoder's `scaling_factor`). `ae=None` makes a placeholder
    of the right shape for a model whose `codec_path` is not set yet: it builds, and says what is missing
    the moment an image is encoded or decoded."""

    def __init__(self, ae, *, channels: int | None = None, factor: int | None = None,
                 tile_size: int | None = 1024, tile_overlap: int = 128) -> None:
        super().__init__()
        object.__setattr__(self, "ae", ae)  # deliberately not a submodule: see the module docs
        if ae is not None:
            ae.eval().requires_grad_(False)
            channels, factor = ae.config.latent_channels, dcae_factor(ae.config)
            self.scaling_factor = float(ae.config.scaling_factor)
        elif channels is None or factor is None:
            raise ValueError("a DCAECodec without an autoencoder needs channels and factor")
        self.channels, self.factor = int(channels), int(factor)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap

    @classmethod
    def from_local(cls, path: str | Path | None, expected_channels: int | None = None,
                   expected_factor: int | None = None, **kwargs) -> "DCAECodec":
        """Load an `AutoencoderDC` from a local diffusers folder (or a pipeline folder with `vae/`).
        `path=None` gives the placeholder (factor `expected_factor`, default 32)."""
        if path is None:
            if expected_channels is None:
                raise SanaImportError("codec 'dcae' needs codec_path: the folder of a diffusers AutoencoderDC")
            return cls(None, channels=expected_channels, factor=expected_factor or DCAE_DEFAULT_FACTOR, **kwargs)
        folder = find_component(path, "vae")
        config = read_config(folder, "AutoencoderDC")
        if expected_channels is not None and config.get("latent_channels", 32) != expected_channels:
            raise SanaImportError(f"{folder}: the autoencoder has {config.get('latent_channels', 32)} latent "
                                  f"channels, the model expects {expected_channels}")
        if expected_factor is not None and dcae_factor(config) != expected_factor:
            raise SanaImportError(f"{folder}: the autoencoder downsamples by {dcae_factor(config)}, "
                                  f"the model expects {expected_factor}")
        try:
            from diffusers import AutoencoderDC
        except ImportError:
            raise SanaImportError("the DC-AE codec needs diffusers: pip install 'linearsr[sana]'") from None
        with torch.device("meta"):  # no random init of weights about to be replaced
            ae = AutoencoderDC.from_config(config)
        state = load_weights(folder)
        try:
            ae.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise SanaImportError(f"{folder}: weights do not match config.json "
                                  f"({' '.join(str(e).split())[:300]})") from None
        leftover = [n for n, t in [*ae.named_parameters(), *ae.named_buffers()] if t.is_meta]
        if leftover:
            raise SanaImportError(f"{folder}: no weights for {', '.join(leftover[:3])}")
        return cls(ae.float(), **kwargs)

    @property
    def available(self) -> bool:
        return self.ae is not None

    def _need_ae(self):
        if self.ae is None:
            raise ValueError("this model's codec is 'dcae' but no autoencoder is set: put the folder of SANA's "
                             "DC-AE (a diffusers AutoencoderDC) in the model's config.json as codec_path")
        return self.ae

    def _apply(self, fn, recurse: bool = True):  # .to()/.cuda()/.double() reach the hidden autoencoder
        if self.ae is not None:
            self.ae._apply(fn)
        return super()._apply(fn, recurse)

    def _ae_dtype(self) -> torch.dtype:
        return next(self._need_ae().parameters()).dtype

    # ---- encode ------------------------------------------------------------------------------------------
    def _encode_tile(self, image: torch.Tensor) -> torch.Tensor:
        return self._need_ae().encoder(image)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) scaled latent; tiled beyond `tile_size` px."""
        h, w = image.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not a multiple of the codec factor {self.factor}")
        if self.tile_size and max(h, w) > self.tile_size:
            return self.encode_tiled(image, self.tile_size, self.tile_overlap)
        z = self._encode_tile(image.to(self._ae_dtype()))
        return (z * self.scaling_factor).to(image.dtype)

    def encode_tiled(self, image: torch.Tensor, tile_size: int, overlap: int = 128) -> torch.Tensor:
        """Encode in tiles of `tile_size` px overlapping by `overlap` px, blended in latent space."""
        x = image.to(self._ae_dtype())
        z = tiled_apply(self._encode_tile, x, tile_size, overlap, align=self.factor, ratio=1 / self.factor)
        return (z * self.scaling_factor).to(image.dtype)

    # ---- decode ------------------------------------------------------------------------------------------
    def _decode_tile(self, latent: torch.Tensor) -> torch.Tensor:
        return self._need_ae().decoder(latent)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latent -> (B, 3, h f, w f) image, unclamped; tiled beyond `tile_size` px."""
        h, w = latent.shape[-2:]
        if self.tile_size and max(h, w) * self.factor > self.tile_size:
            return self.decode_tiled(latent, self.tile_size, self.tile_overlap)
        z = latent.to(self._ae_dtype()) / self.scaling_factor
        return self._decode_tile(z).to(latent.dtype)

    def decode_tiled(self, latent: torch.Tensor, tile_size: int, overlap: int = 128) -> torch.Tensor:
        """Decode latent tiles covering `tile_size` px (overlapping by `overlap` px), blended in image space."""
        z = latent.to(self._ae_dtype()) / self.scaling_factor
        tile, over = max(1, tile_size // self.factor), overlap // self.factor
        return tiled_apply(self._decode_tile, z, tile, over, align=1, ratio=self.factor).to(latent.dtype)

    def extra_repr(self) -> str:
        state = "no autoencoder loaded" if self.ae is None else f"scaling_factor={self.scaling_factor:.5f}"
        return f"channels={self.channels}, factor={self.factor}, tile_size={self.tile_size}, {state}"

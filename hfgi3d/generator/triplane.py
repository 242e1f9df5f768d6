"""The EG3D tri-plane generator: mapping → tri-planes → volume rendering → super-resolution."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hfgi3d.cameras import pixel_rays, split_c25
from hfgi3d.generator.config import GeneratorConfig
from hfgi3d.generator.layers import StyleGAN2Backbone
from hfgi3d.generator.renderer import OSGDecoder, query_planes, render_rays
from hfgi3d.generator.superresolution import SUPERRESOLUTION_MODULES

PLANE_CHANNELS = 32  # per plane; EG3D's decoder and super-resolution hard-code it


class TriPlaneGenerator(nn.Module):
    """Pure-PyTorch EG3D generator, state-dict compatible with NVIDIA's ``G_ema``.

    Public vocabulary follows EG3D: ``z`` (N×z_dim), ``c`` (N×25 camera labels, see
    :mod:`hfgi3d.cameras`), ``ws`` (N×num_ws×w_dim), ``planes`` (N×3×32×R×R). Images are
    N×3×H×W with values about ``[-1, 1]``; depth is in world units along each ray.
    The neural rendering resolution is read from the config unless given per call; no
    call mutates the module.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        # EG3D's training loop registers the dataset's camera-label std on G; it is part of
        # released state dicts (first key) and used only to add label noise in training.
        self.register_buffer("dataset_label_std", torch.zeros([config.c_dim]))
        self.backbone = StyleGAN2Backbone(
            config.z_dim, config.c_dim, config.w_dim,
            img_resolution=config.plane_resolution, img_channels=3 * PLANE_CHANNELS,
            mapping_layers=config.mapping_layers, channel_base=config.channel_base,
            channel_max=config.channel_max, conv_clamp=config.conv_clamp,
        )  # fmt: skip
        sr_class = SUPERRESOLUTION_MODULES[config.superresolution]
        self.superresolution = sr_class(PLANE_CHANNELS, config.sr_conv_clamp, config.rendering.sr_antialias)
        self.decoder = OSGDecoder(PLANE_CHANNELS, PLANE_CHANNELS, config.rendering.decoder_lr_mul)

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    @property
    def w_avg(self) -> Tensor:
        """Tracked mean of W (``w_dim``), the truncation centre."""
        return self.backbone.mapping.w_avg

    def mapping(
        self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        """``z`` N×z_dim and camera ``c`` N×25 → ``ws`` N×num_ws×w_dim."""
        rendering = self.config.rendering
        if rendering.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * rendering.c_scale, truncation_psi, truncation_cutoff)

    def planes(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """Tri-plane features N×3×32×R×R from ``ws``."""
        planes = self.backbone.synthesis(ws, noise_mode=noise_mode)
        return planes.view(len(planes), 3, PLANE_CHANNELS, planes.shape[-2], planes.shape[-1])

    def render(
        self,
        planes: Tensor,
        ws: Tensor,
        c: Tensor,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """Render given tri-planes from cameras ``c`` (N×25); ``ws`` (N×num_ws×w_dim, or 1×… for
        one latent seen from all N cameras) drives the super-resolution.

        Returns a dict with ``image`` (N×3×img_res²), ``image_raw`` (N×3×r², the neural
        rendering), ``image_depth`` (N×1×r²), ``image_feature`` (N×32×r², input of the
        super-resolution) and ``image_weights`` (N×1×r², accumulated opacity), where
        ``r`` is the neural rendering resolution.
        """
        res = neural_rendering_resolution or self.config.rendering.neural_rendering_resolution
        cam2world, intrinsics = split_c25(c)
        origins, directions = pixel_rays(cam2world, intrinsics, res)
        out = render_rays(planes, self.decoder, origins, directions, self.config.rendering, deterministic)
        n = len(c)
        image_feature = out["features"].permute(0, 2, 1).reshape(n, -1, res, res).contiguous()
        image_raw = image_feature[:, :3]
        image = self.superresolution(
            image_raw, image_feature, ws, noise_mode=self.config.rendering.superresolution_noise_mode
        )
        return {
            "image": image,
            "image_raw": image_raw,
            "image_depth": out["depth"].permute(0, 2, 1).reshape(n, 1, res, res),
            "image_feature": image_feature,
            "image_weights": out["weights_sum"].permute(0, 2, 1).reshape(n, 1, res, res),
        }

    def render_cameras(
        self,
        planes: Tensor,
        ws: Tensor,
        c: Tensor,
        batch_size: int = 4,
        deterministic: bool = False,
        neural_rendering_resolution: int | None = None,
    ) -> dict[str, Tensor]:
        """Render one latent's tri-planes (1×3×32×R×R, ``ws`` 1×num_ws×w_dim) from K cameras
        ``c`` (K×25), ``batch_size`` at a time to bound memory; same keys as :meth:`render`."""
        outputs = []
        for chunk in c.split(batch_size):
            k = len(chunk)
            outputs.append(
                self.render(
                    planes.expand(k, -1, -1, -1, -1),
                    ws,  # one latent: the super-resolution modulates its kernels once for all k
                    chunk,
                    neural_rendering_resolution,
                    deterministic,
                )
            )
        return {key: torch.cat([out[key] for out in outputs]) for key in outputs[0]}

    def synthesis_cameras(
        self,
        ws: Tensor,
        c: Tensor,
        batch_size: int = 4,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """One latent (``ws`` 1×num_ws×w_dim) from K cameras (K×25): the tri-planes once, then
        :meth:`render_cameras`."""
        return self.render_cameras(self.planes(ws), ws, c, batch_size, deterministic, neural_rendering_resolution)

    def synthesis(
        self,
        ws: Tensor,
        c: Tensor,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "const",
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """``ws`` and cameras ``c`` → images; see :meth:`render` for the returned dict."""
        return self.render(self.planes(ws, noise_mode), ws, c, neural_rendering_resolution, deterministic)

    def forward(
        self,
        z: Tensor,
        c: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        neural_rendering_resolution: int | None = None,
        noise_mode: str = "const",
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """Mapping and synthesis with the same camera for conditioning and rendering."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, neural_rendering_resolution, noise_mode, deterministic)

    def sample_mixed(
        self, coordinates: Tensor, directions: Tensor, ws: Tensor, noise_mode: str = "const"
    ) -> dict[str, Tensor]:
        """Density logits ``sigma`` (N×M×1) and features ``rgb`` (N×M×32) at world points N×M×3.

        ``directions`` is accepted for EG3D compatibility; the decoder ignores it.
        """
        del directions
        return query_planes(self.planes(ws, noise_mode), self.decoder, coordinates, self.config.rendering.box_warp)

"""Camera refinement: each photo's input camera, adjusted in stage 1 and then frozen.

A camera estimated from a photo is off by a few hundredths of a radian. With
``model.camera.refine``, stage 1 optimizes per-photo yaw, pitch and roll offsets (radians, about
EG3D's pivot; roll about the viewing axis) and, with ``model.camera.refine_translation``, a shift of the
camera centre (world units) together with the latent (:func:`hfgi3d.cameras.offset_c25`). At
stage 1's last step the moved cameras are frozen: the occluded stage, the pseudo views, stage 2
and every output use them. :class:`hfgi3d.inversion.InversionModule` holds one
:class:`CameraRefinement` (``module.camera``) and puts :meth:`CameraRefinement.trained` in stage 1's
Adam as a parameter group of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hfgi3d.cameras import offset_c25


class CameraRefinement(nn.Module):
    """The offsets of ``photos`` input cameras, and the cameras they gave once frozen.

    Args:
        photos: N, the photos of the fit.
        translate: also refine the camera centre (else only the three angles move).
    """

    initial: Tensor
    refined: Tensor
    frozen: Tensor

    def __init__(self, photos: int, translate: bool) -> None:
        super().__init__()
        self.translate = translate
        self.angles = nn.Parameter(torch.zeros(photos, 3))  # yaw, pitch, roll (radians)
        self.translation = nn.Parameter(torch.zeros(photos, 3))  # world units
        self.register_buffer("initial", torch.zeros(photos, 25))  # the cameras the photos came with
        self.register_buffer("refined", torch.zeros(photos, 25))  # the moved cameras, once frozen
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def trained(self) -> list[nn.Parameter]:
        """What stage 1 optimizes: the angles, and the translation when it is refined."""
        return [self.angles, self.translation] if self.translate else [self.angles]

    def moved(self, c25: Tensor) -> Tensor:
        """Each photo's camera (``N×25``) moved by its current offsets (differentiable)."""
        return torch.cat(
            [
                offset_c25(
                    c25[photo : photo + 1], self.angles[photo], self.translation[photo] if self.translate else None
                )
                for photo in range(len(c25))
            ]
        )

    @torch.no_grad()
    def freeze(self, initial: Tensor) -> None:
        """Fix the moved cameras (``initial``: the cameras the photos came with, ``N×25``)."""
        self.initial.copy_(initial)
        self.refined.copy_(self.moved(initial.to(self.refined.device)))
        self.frozen.fill_(True)

    def current(self, c25: Tensor) -> Tensor:
        """The refined cameras once frozen, else ``c25`` moved by the current offsets (no gradient)."""
        if bool(self.frozen):
            return self.refined
        with torch.no_grad():
            return self.moved(c25)

    def record(self, initial: Tensor, used: Tensor, photo: int) -> dict[str, Any]:
        """``camera.json`` of photo ``photo``: the camera it came with (``initial``, ``N×25``), the one
        the results are rendered with (``used``) and the offsets."""
        yaw, pitch, roll = (float(value) for value in self.angles[photo].detach())
        return {
            "refined": bool(self.frozen),
            "initial_c25": initial[photo].tolist(),
            "c25": used[photo].tolist(),
            "offsets_rad": {"yaw": yaw, "pitch": pitch, "roll": roll},
            "translation": self.translation[photo].detach().tolist(),
        }

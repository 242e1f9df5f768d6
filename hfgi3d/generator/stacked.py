"""N generators of one architecture, each with its own weights, run as one batched call.

Batched inversion tunes one copy of the generator per photo. :class:`StackedGenerator` keeps the
copies' parameters stacked along a new leading dimension (``N×…`` for each parameter of
:class:`~hfgi3d.generator.TriPlaneGenerator`) and runs them with ``torch.func``: ``vmap`` over
``functional_call`` of one template module. Nothing in the generator's layers changes, and the
batching rules turn every convolution with per-photo kernels into one grouped convolution over
the photos (``groups = N``), the form EG3D's modulated convolution already uses for per-sample
kernels.

Because the parameters are one tensor per name, a single ``torch.optim.Adam`` over them keeps
each photo's moments in its own slice: Adam works element by element, so it steps each photo
exactly as N separate optimizers would (tested).

Convention:
    Photo ``i`` owns slice ``i`` of every parameter, its latent ``ws[i]`` (``N×num_ws×w_dim``)
    and its cameras ``c[i]`` (``N×K×25``); outputs are ``N×K×…``. Buffers (constant noise, FIR
    filters, ``w_avg``) are shared. Random draws (ray jitter, latent noise) are shared too
    (``randomness="same"``): every photo sees the jitter that a single-photo run started from
    the same seed draws at that step, so a batch reproduces N single runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hfgi3d.generator.config import GeneratorConfig
from hfgi3d.generator.triplane import TriPlaneGenerator


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _apply(result: Tensor | dict[str, Tensor], function: Callable[[Tensor], Tensor]) -> Any:
    """``function`` of a tensor, or of each value of a dict of tensors (the generator's outputs)."""
    if isinstance(result, Tensor):
        return function(result)
    return {key: function(value) for key, value in result.items()}


MAPPING_PREFIX = "backbone.mapping."


def _key(name: str) -> str:
    """Parameter names of the template as module attribute names (a dot is not allowed there)."""
    return name.replace(".", "__")


class _Call(nn.Module):
    """``forward`` runs one method of the wrapped generator, so that ``functional_call`` can reach it."""

    def __init__(self, generator: TriPlaneGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.generator, method)(*args, **kwargs)


class StackedGenerator(nn.Module):
    """``count`` copies of ``generator``, each starting from its weights and then tuned on its own.

    Args:
        generator: the template: its architecture, its buffers and the starting weights of
            every copy (it is copied, not kept).
        count: N, the number of copies.
        photos_per_call: copies run together in one ``vmap`` call; the rest follow in further
            calls, each drawing the same random numbers as the first (so results do not depend on
            it). ``0``: all at once on a GPU, one at a time on a CPU, where the grouped
            convolutions are slower than separate ones (benchmarks/README.md, batched inversion).
            One copy, or any copies under autocast (which ``vmap`` ignores), run without ``vmap``.
    """

    def __init__(self, generator: TriPlaneGenerator, count: int, photos_per_call: int = 0) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"a stacked generator needs at least one copy, got {count}")
        self.config: GeneratorConfig = generator.config
        self.count = count
        self.photos_per_call = photos_per_call
        self._names = [name for name, _ in generator.named_parameters()]
        self._buffer_names = [name for name, _ in generator.named_buffers()]
        self.weights = nn.ParameterDict(
            {
                _key(name): nn.Parameter(value.detach().unsqueeze(0).repeat_interleave(count, 0).clone())
                for name, value in generator.named_parameters()
            }
        )
        for name, value in generator.named_buffers():
            self.register_buffer(_key(name), value.detach().clone(), persistent=False)
        # The template runs the copies' weights: its own tensors are never used, so it holds none.
        template = copy.deepcopy(generator).to("meta")
        self._template = (_Call(template),)  # a tuple: not a submodule (no parameters of its own)
        self.train(generator.training)

    def train(self, mode: bool = True) -> StackedGenerator:
        super().train(mode)
        self._template[0].train(mode)
        return self

    @property
    def template(self) -> TriPlaneGenerator:
        """The module every copy runs through (its own tensors live on the ``meta`` device)."""
        return self._template[0].generator

    @property
    def num_ws(self) -> int:
        return self.template.num_ws

    def mapping(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """:meth:`TriPlaneGenerator.mapping` of copy 0. Inversion never tunes the mapping network
        (no gradient reaches it), so every copy maps alike."""
        weights, buffers = self._tensors(mapping=True)
        first = {name: value[0] for name, value in weights.items()}
        return functional_call(self._template[0], {**first, **buffers}, ("mapping", z, c, truncation_psi))

    def _tensors(self, mapping: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The weights (the mapping network's only with ``mapping``: rendering never uses them, and
        leaving them out spares their gradient's zeros) and buffers, as ``functional_call`` names them."""
        names = [name for name in self._names if mapping or not name.startswith(MAPPING_PREFIX)]
        weights = {f"generator.{name}": self.weights[_key(name)] for name in names}
        buffers = {f"generator.{name}": getattr(self, _key(name)) for name in self._buffer_names}
        return weights, buffers

    def _chunk(self, device: torch.device) -> int:
        if torch.is_autocast_enabled(device.type):
            # torch.func.vmap ignores autocast (torch 2.14: a convolution under vmap stays float32
            # inside a bf16 autocast region, even one entered inside the vmapped function), so
            # under mixed precision (trainer.precision bf16-mixed) the photos run one by one.
            return 1
        if self.photos_per_call > 0:
            return self.photos_per_call
        return 1 if device.type == "cpu" else self.count

    def _map(self, method: str, *batched: Tensor, **options: Any) -> Any:
        """``method`` of the template for each photo: slice ``i`` of the weights and of every
        tensor in ``batched`` (each with a leading photo dimension), in calls of
        :attr:`photos_per_call` photos that all start from the same random state."""
        weights, buffers = self._tensors()
        template = self._template[0]

        def one(photo_weights: dict[str, Tensor], *photo_args: Tensor) -> Any:
            return functional_call(template, {**photo_weights, **buffers}, (method, *photo_args), options)

        chunk = self._chunk(batched[0].device)
        if chunk >= self.count > 1:
            return vmap(one, randomness="same")(weights, *batched)
        # unbind, not indexing: its backward gathers every photo's gradient in one tensor.
        slices = {name: value.unbind(0) for name, value in weights.items()}
        start_state = _rng_state(batched[0].device)
        outputs = []
        for first in range(0, self.count, chunk):
            _set_rng_state(batched[0].device, start_state)
            last = min(first + chunk, self.count)
            if last - first == 1:
                photo = {name: value[first] for name, value in slices.items()}
                result = one(photo, *(tensor[first] for tensor in batched))
                outputs.append(_apply(result, lambda tensor: tensor.unsqueeze(0)))
            else:
                photos = {name: torch.stack(value[first:last]) for name, value in slices.items()}
                outputs.append(vmap(one, randomness="same")(photos, *(tensor[first:last] for tensor in batched)))
        if isinstance(outputs[0], Tensor):
            return torch.cat(outputs)
        return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}

    def planes(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """Tri-planes ``N×3×32×R×R`` of one latent per photo (``ws``: ``N×num_ws×w_dim``)."""
        return self._map("planes", ws.unsqueeze(1), noise_mode=noise_mode).squeeze(1)

    def render(
        self,
        planes: Tensor,
        ws: Tensor,
        c: Tensor,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """Photo ``i``'s tri-planes (``planes[i]``, ``ws[i]``) from its ``K`` cameras ``c[i]``
        (``c``: ``N×K×25``), all photos in one call; the keys of
        :meth:`TriPlaneGenerator.render`, each ``N×K×…``."""
        k = c.shape[1]
        return self._map(
            "render",
            planes.unsqueeze(1).expand(-1, k, -1, -1, -1, -1),
            ws.unsqueeze(1),  # one latent per photo for its k cameras (TriPlaneGenerator.render)
            c,
            neural_rendering_resolution=neural_rendering_resolution,
            deterministic=deterministic,
        )

    def synthesis(
        self, ws: Tensor, c: Tensor, neural_rendering_resolution: int | None = None, deterministic: bool = False
    ) -> dict[str, Tensor]:
        """``ws`` (``N×num_ws×w_dim``) and cameras ``c`` (``N×K×25``) → images, as :meth:`render`."""
        return self.render(self.planes(ws), ws, c, neural_rendering_resolution, deterministic)

    def synthesis_cameras(
        self,
        ws: Tensor,
        c: Tensor,
        batch_size: int,
        neural_rendering_resolution: int | None = None,
        deterministic: bool = False,
    ) -> dict[str, Tensor]:
        """Each photo's tri-planes once, rendered from its ``K`` cameras ``batch_size`` at a time
        (:meth:`TriPlaneGenerator.synthesis_cameras`), all in one call per :attr:`photos_per_call`
        photos: one reparametrization per photo, whatever K. Keys as :meth:`render`."""
        return self._map(
            "synthesis_cameras",
            ws.unsqueeze(1),
            c,
            batch_size=batch_size,
            neural_rendering_resolution=neural_rendering_resolution,
            deterministic=deterministic,
        )

    @torch.no_grad()
    def generator(self, index: int) -> TriPlaneGenerator:
        """Copy ``index`` as a stand-alone generator (for saving, rendering outputs, editing). Building
        it leaves the global RNG alone (its random initialisation is overwritten at once)."""
        with torch.random.fork_rng(devices=[]):
            single = TriPlaneGenerator(self.config)
        state = {name: self.weights[_key(name)][index] for name in self._names}
        state.update({name: getattr(self, _key(name)) for name in self._buffer_names})
        single.load_state_dict(state)
        return single.to(next(iter(self.weights.values())).device).train(self.training)

    @torch.no_grad()
    def load_generator(self, index: int, generator: TriPlaneGenerator) -> None:
        """Set copy ``index`` to ``generator``'s weights (same architecture)."""
        for name, value in generator.named_parameters():
            self.weights[_key(name)][index].copy_(value)

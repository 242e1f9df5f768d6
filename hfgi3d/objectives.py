"""The inversion's objectives (docs/method.md §4–§6): named terms ``loss_<name>``, each weighted by
``model.loss.lambda_<name>`` (:class:`~hfgi3d.stages.LossConfig`).

==================  ========================================================  ==========================
stage               terms                                                     loss
``estimate``        ``l2``, ``lpips``: the input view against the photo       ``L_rec``
``occluded``        ``l2``, ``lpips``: ``G(w_o, p0)·D`` against ``x·D``        ``L_rec``
``pseudo_multiview``  ``input`` (the input view's ``L_rec``), and ``occluded``    ``Σ λ_<name>·loss_<name>``
                    + ``visible`` (masked target, Eq. 5) or ``pseudo``
                    (blended target), each an ``L_rec`` of the auxiliary views
==================  ========================================================  ==========================

:func:`reconstruction` is ``L_rec = λ_l2·MSE + λ_lpips·LPIPS``, the one place its two terms are
weighted; :func:`weighted_sum` weighs a stage's terms by their names. Both are pure: the module
computes the unweighted terms (reducing them per photo and reusing prepared LPIPS targets) and
calls these, and so do the tests. A new term ``loss_<name>`` needs its ``lambda_<name>`` in
:class:`~hfgi3d.stages.LossConfig` and in ``configs/hfgi3d.yaml``; :func:`weighted_sum` refuses a
term without one.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from hfgi3d.stages import LossConfig


def reconstruction(l2: Tensor, lpips: Tensor | None, weights: LossConfig) -> Tensor:
    """``L_rec = λ_l2·l2 + λ_lpips·lpips`` from its unweighted terms (``lpips`` ``None``: no LPIPS
    term, as with ``λ_lpips = 0``, when no VGG pass is made at all)."""
    return weights.lambda_l2 * l2 if lpips is None else weights.lambda_l2 * l2 + weights.lambda_lpips * lpips


def weighted_sum(terms: Mapping[str, Tensor], weights: LossConfig) -> Tensor:
    """``Σ λ_<name>·terms[name]``, summed in the order of ``terms`` (unweighted terms by name).

    Raises:
        KeyError: a term has no ``lambda_<name>`` in ``weights``.
    """
    total: Tensor | None = None
    for name, term in terms.items():
        weight = getattr(weights, f"lambda_{name}", None)
        if weight is None:
            raise KeyError(f"the term loss_{name} has no weight: add lambda_{name} to LossConfig and the presets")
        total = weight * term if total is None else total + weight * term
    if total is None:
        raise ValueError("no terms to sum")
    return total

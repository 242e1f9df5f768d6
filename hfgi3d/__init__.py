"""hfgi3d: high-fidelity 3D GAN inversion of face photos by pseudo-multi-view optimization.

``python -m hfgi3d fit`` (:mod:`hfgi3d.fit`, a LightningCLI) runs the method; docs/method.md explains
each step and where every number comes from. Where each step lives (paths under ``hfgi3d/``, and the
repository's ``callbacks/``, shipped as ``hfgi3d.callbacks``)::

    photo → crop + camera (§3)  preprocess/crop.py: align_face, eg3d_crop_matrix; pose/registry.py: POSE_ESTIMATORS
    the generator G (§2)        generator/triplane.py: TriPlaneGenerator.synthesis, render_cameras
    stage 1, w_e (§4)           inversion.py: InversionModule._estimate_step
    stage 1, w_o (§4)           inversion.py: InversionModule._occluded_step
    camera refinement (§4)      camera_refinement.py: CameraRefinement (InversionModule.camera)
    auxiliary poses (§5)        data/pseudo_views.py: auxiliary_cameras
    masks, warped photo (§5)    geometry.py: visibility_mask, backward_warp, upsample_depth
    pseudo views (§5)           data/pseudo_views.py: build_pseudo_views; geometry.py: poisson_blend, alpha_blend
    pseudo views as data (§5)   data/datamodule.py: PseudoViewDataModule
    stage 2, tuning G (§6)      inversion.py: InversionModule._pseudo_multiview_step, auxiliary_terms
    L_rec, the weighted sum     objectives.py: reconstruction, weighted_sum; losses.py: mse_per_sample, LPIPS
    each stage's settings       stages.py: EstimateConfig, OccludedConfig, PseudoMultiviewConfig, LossConfig
    outputs (§8)                callbacks/outputs.py: InversionOutputs; run_folder.py (file names)
    evaluation (§9)             callbacks/evaluation.py: Evaluation; metrics/evaluation.py
    editing                     editing/edit.py: edit, edit_texture; editing/direction_fit.py: fit_direction

Packages: :mod:`hfgi3d.generator` (EG3D), :mod:`hfgi3d.data` (the input and the pseudo views),
:mod:`hfgi3d.pose` (pose estimators), :mod:`hfgi3d.preprocess` (photo → crop + camera),
:mod:`hfgi3d.metrics`, :mod:`hfgi3d.editing` (directions, ``edit``, ``edit-texture``) and
:mod:`hfgi3d.benchmarks`.
"""

__version__ = "0.1.0"

"""Editing a finished fit: attribute directions in W (:mod:`.directions`: loading and applying them;
:mod:`.direction_fit`: fitting one, InterFaceGAN's SVM on scored samples; :mod:`.scorers`: what a
render is scored by), ``edit`` and ``edit-texture`` on a run folder (:mod:`.edit`)."""

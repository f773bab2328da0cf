"""`xclr-eval`: what a trained encoder learned, measured on a labelled evaluation set.

Layering: xclr_eval -> xclr_train (models, checkpoints, tar reader) -> xclr_schemas; it also uses
sentence-transformers (class captions), scikit-learn and matplotlib, which the trainer never imports.
"""

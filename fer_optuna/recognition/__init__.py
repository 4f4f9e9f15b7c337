"""The model in use: faces in photos, frames and videos, and their emotions.

recognizer is the Python API (`from fer_optuna import Recognizer`); detectors find faces, faces
reads images and crops them as FER2013 frames them, video reads videos and tracks faces, and
predict is `fer-opt predict`'s files and rows.

It imports `fer_optuna.training` (the model files) and never `fer_optuna.search`.
"""

"""fer-optuna: find the best CNN for facial-expression recognition (FER2013) with Optuna, and use it.

`from fer_optuna import Recognizer` is the Python API (fer_optuna.recognition.recognizer); it is imported
on first use, so that the command line starts without loading PyTorch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Recognizer", "FaceEmotion"):
        from .recognition import recognizer

        return getattr(recognizer, name)
    raise AttributeError(f"module 'fer_optuna' has no attribute {name!r}")

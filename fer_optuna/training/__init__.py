"""The training core: FER2013's data, the models, the trainer and the files a model lives in.

data, streams and quality read and check every edition of the data; config and models define a
run; augment, trainer and inference train and evaluate on the device; checkpoints and portable
write and read model files (`.pt`, `.onnx`); metrics scores them.

It imports nothing of `fer_optuna.search` or `fer_optuna.recognition`, and nothing of Optuna:
anyone can train and evaluate a model with it alone.
"""

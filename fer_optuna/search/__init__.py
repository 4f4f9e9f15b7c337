"""The search service: Optuna studies over the training core, run by workers on any number of hosts.

study reads study files and creates, reports and exports studies; export writes what leaves a
study (configs, model files, ONNX); budget chooses among trials under a study's constraints and
objectives; storage opens SQLite or PostgreSQL with retries; worker runs trials; trial_files and artifacts keep each trial's files on
the host and in the study's store; tracking logs to W&B; report ranks trials and builds ensembles.

It imports `fer_optuna.training` and never `fer_optuna.recognition`.
"""

# The workers' image: fer-optuna on PyTorch with CUDA (the torch wheel brings its CUDA libraries).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY fer_optuna ./fer_optuna
RUN pip install --no-cache-dir -c constraints.txt '.[postgres]'
ENTRYPOINT ["fer-opt"]
CMD ["--help"]

"""Storage overhead: how many trials per second the study storage sustains with N worker processes.

Each worker runs the storage traffic of a real fer-optuna trial with no training
in it (a tiny trial: the study's suggest calls, the worker/device attributes,
3 epochs of report + should_prune + epoch attributes, the final tell), under
study.optimize with heartbeats on, exactly as `fer-opt worker` does. This is the
ceiling a storage puts on a study, the number to know before pointing 100 GPUs at it.

    python benchmarks/storage.py --workers 8 --seconds 20 --out storage.json
        # SQLite file, and a throwaway PostgreSQL server started from the machine's binaries
    python benchmarks/storage.py --storage postgresql+psycopg://u:p@host/db   # an existing server
    python benchmarks/storage.py --no-sqlite --workers 60 --max-connections 20 --pgbouncer 8
        # a fleet larger than the server's connection slots, directly and through PgBouncer
    python benchmarks/storage.py --no-sqlite --pgbouncer 6 --grpc   # also Optuna's gRPC proxy (pip install grpcio)
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import queue
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

EPOCHS = 3


def _worker(url: str, seconds: float, ready, go) -> None:
    import optuna

    from fer_optuna.search import storage as fer_storage
    from fer_optuna.search import study as fer_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ready.put(multiprocessing.current_process().name)
    go.wait()
    # Opened after the start, as a fleet starts: with more processes than free connection slots, the
    # later ones wait for one here and run their `seconds` when they get it.
    if url.startswith("grpc://"):  # Optuna's gRPC storage proxy (no heartbeat there)
        host, port = url.removeprefix("grpc://").split(":")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    else:
        storage = fer_storage.open_storage(url, heartbeat=True)
    study, spec = fer_study.load_study("bench", storage)

    def objective(trial: optuna.Trial) -> float:
        params = fer_study.suggest(trial, spec.space)
        trial.set_user_attr("worker", "bench")
        trial.set_user_attr("device", "cpu")
        for epoch in range(1, EPOCHS + 1):
            trial.report(params["dropout"] * epoch, epoch)
            trial.set_user_attr("epochs_run", epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return params["dropout"]

    study.optimize(objective, timeout=seconds)


class _GrpcProxy:
    """Optuna's gRPC storage proxy (`optuna.storages.run_grpc_proxy_server`, needs grpcio) on the study
    storage, in a process of its own so that its CPU time can be told apart."""

    def __init__(self, url: str):
        with socket.socket() as s:  # a port nobody listens on now
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = multiprocessing.get_context("spawn").Process(target=_serve_grpc, args=(url, self.port), daemon=True)

    def start(self) -> "_GrpcProxy":
        import optuna

        self.proc.start()
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=self.port).wait_server_ready(timeout=120)
        return self

    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        from pgserver import process_tree_cpu_seconds

        return process_tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join()


def _serve_grpc(url: str, port: int) -> None:
    import optuna

    from fer_optuna.search import storage as fer_storage

    optuna.storages.run_grpc_proxy_server(fer_storage.open_storage(url), host="127.0.0.1", port=port)


def _wait_for_start(procs: list, ready) -> None:
    """The processes that reached the start; one that died before it is reported and left out, never waited for."""
    waiting = {p.name: p for p in procs}
    while waiting:
        try:
            waiting.pop(ready.get(timeout=0.5), None)
        except queue.Empty:
            for name, p in list(waiting.items()):
                if p.exitcode is not None:
                    print(f"worker {name} died before the start (exit {p.exitcode})", flush=True)
                    del waiting[name]


class _PeakConnections(threading.Thread):
    """The most client connections the server held at once, polled on `conn`, a connection of its own
    made before any other (pgserver.PostgresServer.connect), so that a full server still answers it."""

    def __init__(self, conn):
        super().__init__(daemon=True)
        self.conn, self.peak, self.done = conn, 0, threading.Event()

    def run(self) -> None:
        from pgserver import client_connections

        while not self.done.wait(0.2):
            self.peak = max(self.peak, client_connections(self.conn))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def measure(url: str, workers: int, seconds: float, watch=None, label: str | None = None, servers=(),
            proxy: _GrpcProxy | None = None) -> dict:
    """`workers` processes on the study for `seconds` each after they open the storage; with `watch` (see
    _PeakConnections), the peak of the connections the server held; with `servers` (PostgreSQL, PgBouncer),
    the CPU time each used per trial; with `proxy`, the workers go through it."""
    import optuna

    from fer_optuna.search import storage as fer_storage
    from fer_optuna.search import study as fer_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A random sampler: TPE's own cost grows with the history and would hide the storage's.
    spec_text = (ROOT / "studies" / "quick.yaml").read_text().replace("name: quick", "name: bench")
    spec_text = spec_text.replace("sampler: {type: tpe, seed: 0, n_startup_trials: 4}", "sampler: {type: random}")
    spec_file = Path(tempfile.mkdtemp()) / "bench.yaml"
    spec_file.write_text(spec_text.split("enqueue:")[0])
    fer_study.create(spec_file, url, data=str(spec_file), replace=True)
    gc.collect()  # the storage that made the study, and its connection: the slots are the workers'
    peak = _PeakConnections(watch) if watch is not None else None
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    if proxy is not None:
        servers = [*servers, proxy.start()]
    worker_url = proxy.url() if proxy is not None else url
    procs = [ctx.Process(target=_worker, args=(worker_url, seconds, ready, go), name=f"w{i}") for i in range(workers)]
    for p in procs:
        p.start()
    _wait_for_start(procs, ready)
    if peak is not None:
        peak.start()
    cpu0 = [server.cpu_seconds() for server in servers]
    go.set()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    cpu = [server.cpu_seconds() - before for server, before in zip(servers, cpu0)]
    if proxy is not None:
        proxy.stop()
    storage = fer_storage.open_storage(url)
    trials = optuna.load_study(study_name="bench", storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    finished = sum(t.state.is_finished() for t in trials)
    return {"storage": label or fer_storage.mask_url(url).split(":")[0], "workers": workers, "seconds": round(wall, 2),
            "trials": finished, "trials_per_s": round(finished / wall, 2),
            "failed": sum(t.state.name == "FAIL" for t in trials), "crashed": sum(p.exitcode != 0 for p in procs),
            "peak_connections": peak.stop() if peak is not None else None,
            "cpu_ms_per_trial": {type(server).__name__: round(1000 * c / max(finished, 1), 2) for server, c in zip(servers, cpu)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--storage", action="append", help="storage URL(s) [default: a SQLite file and a throwaway PostgreSQL]")
    parser.add_argument("--max-connections", type=int, default=100, help="the throwaway server's (PostgreSQL ships 100)")
    parser.add_argument("--pgbouncer", type=int, metavar="POOL", help="also through PgBouncer with POOL server connections (2 or more: Optuna sets up a new database with two at once)")
    parser.add_argument("--grpc", action="store_true", help="also through Optuna's gRPC storage proxy (pip install grpcio)")
    parser.add_argument("--no-sqlite", action="store_true", help="leave out the SQLite file")
    parser.add_argument("--out", default="benchmark-storage.json")
    args = parser.parse_args()

    servers = []
    targets = [(url, None, None, [], None) for url in args.storage or []]
    if not args.storage:
        from pgserver import PostgresServer, find_bin

        if not args.no_sqlite:
            targets.append((f"sqlite:///{tempfile.mkdtemp()}/bench.db", None, None, [], None))
        if find_bin():
            server = PostgresServer(find_bin(), args.max_connections).start()
            servers.append(server)
            watch = server.connect()
            targets.append((server.new_database(), watch, f"postgresql ({args.max_connections} slots)", [server], None))
            if args.pgbouncer:
                from pgbouncer import PgBouncer, find_pgbouncer

                bouncer = PgBouncer(find_pgbouncer(), server, args.pgbouncer).start()
                servers.append(bouncer)
                targets.append((bouncer.url(server.new_database()), watch, f"pgbouncer (pool {args.pgbouncer})",
                                [server, bouncer], None))
            if args.grpc:
                url = server.new_database()
                targets.append((url, watch, "optuna grpc proxy", [server], _GrpcProxy(url)))
        else:
            print("PostgreSQL binaries not found: measuring SQLite only")
    try:
        rows = []
        for url, watch, label, measured, proxy in targets:
            row = measure(url, args.workers, args.seconds, watch, label, measured, proxy)
            rows.append(row)
            print(f"{row['storage']:<26} {row['workers']} workers: {row['trials']} trials in {row['seconds']} s = "
                  f"{row['trials_per_s']} trials/s ({row['failed']} failed, {row['crashed']} crashed"
                  + (f", peak {row['peak_connections']} server connections; CPU ms per trial {row['cpu_ms_per_trial']})"
                     if watch else ")"), flush=True)
    finally:
        for server in reversed(servers):
            server.stop()
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

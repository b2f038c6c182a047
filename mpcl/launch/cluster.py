"""The Ray cluster a run or sweep uses: the address probed before anything else, Ray started
or joined, and the cluster checked (or grown by its autoscaler) to hold the run's workers."""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext

from mpcl.config import Config
from mpcl.launch import LaunchError

GCS_PROBE_TIMEOUT_S = 5.0
# On a cluster that may grow (one mpcl joined rather than started), how long a run waits for
# the resources it asks for before it says what is missing.
SCALE_WAIT_ENV = "MPCL_SCALE_WAIT_S"
SCALE_WAIT_DEFAULT_S = 300.0


def check_address(address: str | None, timeout: float = GCS_PROBE_TIMEOUT_S) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (start a local Ray).
    A plain host:port must answer as a Ray GCS (one gRPC call) within ``timeout``: nothing
    listening, or another server (the dashboard's HTTP port), is a ``LaunchError`` in
    seconds, where ``ray.init`` would retry for minutes. An authentication refusal is an
    answer too. Called once, before anything else is prepared."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "auto" or "://" in address or ":" not in address:
        return address
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    answered = {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    try:
        with grpc.insecure_channel(address) as channel:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() not in answered:
            detail = (e.details() or e.code().name).strip().splitlines()[0][:160]
            raise LaunchError(f"--address {address}: no Ray cluster (GCS) answers there within "
                              f"{timeout:.0f} s ({e.code().name}: {detail})") from None
    except ValueError as e:  # a malformed target
        raise LaunchError(f"--address {address}: not a host:port ({e})") from None
    return address


def init_ray(address: str | None = None, num_cpus: int | None = None, log_dir: str | os.PathLike | None = None) -> str:
    """Join the cluster at ``address`` (as ``check_address`` returned it); with none, start a
    local Ray with this machine's CPUs and its dashboard on 127.0.0.1 only. Unless
    ``--verbose``, Ray's driver logs go to ``log_dir/logs/ray.log`` (nowhere without a
    ``log_dir``) and the workers' output stays with them (:mod:`mpcl.launch.console`).
    Returns a description."""
    import ray

    from mpcl.launch.console import ray_log_file, ray_logs_to, verbose

    if ray.is_initialized():
        return "the Ray already initialised in this process"
    loud = verbose()
    quiet = {"log_to_driver": loud, "configure_logging": loud, "logging_level": "WARNING"}
    logs = nullcontext() if loud else ray_logs_to(ray_log_file(log_dir) if log_dir is not None else None)
    with logs:
        if address:
            try:
                ray.init(address=address, **quiet)
            except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise LaunchError(f"--address {address}: cannot join the Ray cluster ({first})") from None
            return f"the Ray cluster at {address}"
        cpus = num_cpus or os.cpu_count() or 1
        # a sweep starts processes that take no CPU (trials, Train controllers) besides the workers:
        # Ray's startup limit (the CPUs) would have the raylet warn about a few of them on a laptop
        ray.init(num_cpus=cpus, dashboard_host="127.0.0.1",
                 _system_config={"worker_maximum_startup_concurrency": max(cpus, 8)}, **quiet)
    return "a local Ray (dashboard on 127.0.0.1)"


def use_gpu(cfg: Config) -> bool:
    if cfg.scale.use_gpu != "auto":
        return cfg.scale.use_gpu == "true"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def worker_bundle(cfg: Config) -> dict[str, float]:
    """What one worker asks of a node (the CPU and GPU of ``scale.*``)."""
    bundle: dict[str, float] = {"CPU": float(cfg.scale.cpus_per_worker)}
    if use_gpu(cfg):
        bundle["GPU"] = float(cfg.scale.gpus_per_worker)
    return bundle


def workers_that_fit(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many workers of ``bundle`` the ``nodes`` (their resources) hold: identical bundles
    pack node by node, so this is exact."""
    total = 0
    for node in nodes:
        total += min(int(node.get(k, 0.0) / v + 1e-9) if v > 0 else 1 << 30 for k, v in bundle.items())
    return total


def _missing(cfg: Config, bundle: dict[str, float], nodes: list[dict[str, float]], key_prefix: str) -> str | None:
    """One line naming the key whose request the nodes cannot hold, or None."""
    s = cfg.scale
    if "GPU" in bundle and not any(n.get("GPU", 0) > 0 for n in nodes):  # only use_gpu=true gets here
        return f"{key_prefix}use_gpu={s.use_gpu}: the cluster has no GPU"
    for k, key in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
        need = bundle.get(k, 0.0)
        largest = max((n.get(k, 0.0) for n in nodes), default=0.0)
        if need > largest:
            return (f"{key_prefix}{key}={getattr(s, key)}: no node of the cluster has {need:g} {k} "
                    f"(the largest has {largest:g})")
    fit = workers_that_fit(bundle, nodes)
    if fit < s.workers:
        asked = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
        return (f"{key_prefix}workers={s.workers}: the cluster holds {fit} worker(s) of {asked} "
                f"(it has {', '.join(f'{sum(n.get(k, 0.0) for n in nodes):g} {k}' for k in bundle)})")
    return None


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster_fits(cfg: Config, key_prefix: str = "scale.", can_grow: bool = False,
                       wait_s: float | None = None) -> None:
    """Fail (``LaunchError``, one line naming the key) when the cluster cannot hold the run's
    workers; Ray would wait for them forever. A cluster that ``can_grow`` (an autoscaler) is
    asked for them and given ``wait_s`` (``MPCL_SCALE_WAIT_S``, default 300 s) to add nodes."""
    bundle = worker_bundle(cfg)
    problem = _missing(cfg, bundle, _alive_nodes(), key_prefix)
    if problem is None:
        return
    if not can_grow:
        raise LaunchError(problem)
    from ray.autoscaler.sdk import request_resources

    if wait_s is None:
        try:
            wait_s = float(os.environ.get(SCALE_WAIT_ENV, SCALE_WAIT_DEFAULT_S))
        except ValueError:
            raise LaunchError(f"{SCALE_WAIT_ENV}={os.environ[SCALE_WAIT_ENV]!r}: expected seconds") from None
    print(f"ray: {problem}; asking the autoscaler and waiting up to {wait_s:.0f} s "
          f"({SCALE_WAIT_ENV})", file=sys.stderr, flush=True)
    request_resources(bundles=[bundle] * cfg.scale.workers)
    deadline = time.monotonic() + wait_s
    try:
        while problem is not None and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            problem = _missing(cfg, bundle, _alive_nodes(), key_prefix)
    finally:
        request_resources(bundles=[])
    if problem is not None:
        raise LaunchError(f"{problem} (still, after waiting {wait_s:.0f} s for the autoscaler)")


def start_ray(cfg: Config, address: str | None, key_prefix: str = "scale.",
              log_dir: str | os.PathLike | None = None) -> str:
    """Start or join Ray (``address`` as ``check_address`` returned it; its logs in
    ``log_dir/logs/``) and check that the cluster holds ``cfg``'s workers (an autoscaled
    cluster is asked to grow). Returns where Ray runs."""
    where = init_ray(address, log_dir=log_dir)
    check_cluster_fits(cfg, key_prefix, can_grow=address is not None)
    return where

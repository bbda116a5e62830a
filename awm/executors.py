"""Where independent pieces of work run: one after another in this process, or as Ray tasks
on a cluster (``--executor ray``: $RAY_ADDRESS, else a Ray started on this machine).

A piece of work is a module-level function of one argument that returns a plain value; the
functions that build digests and score pairs write their results to a library folder, so a
cluster needs that folder on storage every worker sees.
"""
import os

from tqdm import tqdm

EXECUTORS = ("local", "ray")
# A task whose worker died (killed, out of memory, node lost) runs again this many times.
RAY_TASK_RETRIES = 3
# The folder that holds the awm package: workers started here import it from there.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def connect_ray():
    """Join the cluster at $RAY_ADDRESS, or start Ray on this machine."""
    try:
        import ray
    except ImportError:
        from awm.errors import AwmError

        raise AwmError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # Workers started here import awm's modules from this checkout; on a cluster, install awm on the workers.
        runtime_env = None if address else {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}}
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, logging_level="ERROR")
    return ray


def cluster_has_gpus():
    return connect_ray().cluster_resources().get("GPU", 0) >= 1


def run_all(function, items, executor="local", description="", progress=False):
    """[function(item) for item in items], in this process or as one Ray task per item
    (scheduled on a GPU when the cluster has them; retried when its worker dies)."""
    items = list(items)
    bar = dict(desc=description, total=len(items), unit="task", leave=False, disable=None if progress else True)
    if executor == "local":
        return [function(item) for item in tqdm(items, **bar)]
    ray = connect_ray()
    task = ray.remote(num_gpus=1 if cluster_has_gpus() else 0, max_retries=RAY_TASK_RETRIES)(function)
    pending = {task.remote(item): index for index, item in enumerate(items)}
    results = [None] * len(items)
    with tqdm(**bar) as progress_bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                progress_bar.update(1)
    return results


def workers(executor):
    """How many tasks can run at once: one locally; on Ray, one per GPU, else per CPU."""
    if executor != "ray":
        return 1
    resources = connect_ray().cluster_resources()
    return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))


def task_device(executor, requested):
    """A Ray task uses the GPU it was scheduled on; locally the device asked for."""
    if executor == "ray":
        return "cuda" if cluster_has_gpus() else "cpu"
    return requested

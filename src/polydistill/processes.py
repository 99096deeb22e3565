"""Worker processes shared by the world's teacher training and the benchmark's models."""

from concurrent.futures import ProcessPoolExecutor


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's running tasks (after an error or an interrupt), else they would train
    on, orphaned."""
    # The executor has no public way to stop running tasks; its worker processes are the
    # only handle on them.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)

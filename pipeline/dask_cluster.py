"""The Dask engine's pre-flight check, shared by `stm run` and the scheduled flow: a run
pointed at a cluster that does not answer fails in one line before any work, not with a
traceback at the first epoch's scoring."""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.errors import DaskUnavailable

CONNECT_SECONDS = 10


def check_scheduler(config: RunConfig) -> None:
    """With a Dask cluster address, raise DaskUnavailable if no scheduler answers there."""
    address = config.scale.dask_address
    if config.scale.engine != "dask" or address is None:
        return
    from distributed import Client

    try:
        with Client(address, timeout=CONNECT_SECONDS, set_as_default=False):
            pass
    except (OSError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())
        raise DaskUnavailable(
            f"scale.dask_address={address}: Dask scheduler not reachable ({reason})"
        ) from err

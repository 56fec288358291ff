"""Keep every test's side effects in temp dirs: Prefect's local state, onnxruntime and
Hugging Face caches. Set before anything imports Prefect, which reads them at import."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from pipeline.logs import route_to_prefect

_SANDBOX = tempfile.mkdtemp(prefix="stm-tests-")
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
os.environ["PREFECT_HOME"] = os.path.join(_SANDBOX, "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["HF_HOME"] = os.path.join(_SANDBOX, "hf")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SANDBOX, "cache")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
# As the CLI does: the stm loggers' records go to the logs of the flow run they are in.
route_to_prefect(os.environ)

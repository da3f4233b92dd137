"""Serving many task encoders on one frozen decoder, and DecT heads, over HTTP on Ray Serve.

An optional extra: `pip install "hf-frozen[serve]"`. The core package never imports it (nor Ray).

    from hf_frozen.serving import build_app, run_server, task_catalog

    catalog = task_catalog({"summarize": "./enc-sum", "translate": "me/enc-tr"})
    run_server(build_app(catalog, base_model_name_or_path="google-t5/t5-base"), port=8000)

or `hf-frozen serve --base_model_name_or_path google-t5/t5-base --task summarize=./enc-sum --port 8000`. See
docs/serving.md.
"""

try:
    import ray  # noqa: F401
    from ray import serve  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'hf_frozen.serving needs Ray Serve ({err}): install it with `pip install "hf-frozen[serve]"`.'
    ) from err

from .app import APP_NAME, ReplicaOptions, build_app, run_server
from .catalog import ServedTask, task_catalog
from .requests import ApiLimits

__all__ = ["APP_NAME", "ApiLimits", "ReplicaOptions", "ServedTask", "build_app", "run_server", "task_catalog"]

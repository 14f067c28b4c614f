"""``kernel.wsgi`` for mem://: the same app, filled inside the server before it serves.

A mem:// store lives in the server process, so the bench cannot reach it from
outside; this module fills it from the plan named by ``BENCH_FILL_PLAN`` at
worker start (gunicorn runs one worker for mem://).
"""

from bench.fill import fill_plan, plan_from_env
from kernel.core.config import load_config
from kernel.core.runtime import Runtime
from kernel.http.app import create_app
from kernel.ops.metrics import Metrics

app = create_app(Runtime(_config := load_config(), metrics=Metrics.from_config(_config)).start())
fill_plan(app.runtime.records, plan_from_env())

"""The kernel's own hook implementations, registered like any plugin."""

from __future__ import annotations

from pathlib import Path

from kernel.core.config import BASTION_SCHEMA, METRICS_SCHEMA, SERVER_SCHEMA
from kernel.core.hookspecs import hookimpl
from kernel.ops.deploy import kernel_problems
from kernel.ops.logs import claim_logging_sections

STATIC_DIR = Path(__file__).parent / "static"


@hookimpl
def bastion_configure(config):
    """Claim the kernel's sections: ``[bastion]``, ``[server]``, ``[metrics]`` and the logging ones."""
    config.section("bastion", BASTION_SCHEMA)
    config.section("server", SERVER_SCHEMA)
    config.section("metrics", METRICS_SCHEMA)
    claim_logging_sections(config)


@hookimpl
def bastion_deploy_checks(config, runtime):
    """The kernel's problems: development mode, process-local storage, hosts, proxies, metrics, the bind."""
    return kernel_problems(config, runtime)


@hookimpl
def bastion_static():
    """Serve the browser client at ``/bastion/``."""
    return [("/bastion", str(STATIC_DIR))]

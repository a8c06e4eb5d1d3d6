"""How every quanta task caches: INPUTS + TASK_SOURCE + the source of the module that holds its computation.

Inputs are ArtifactRefs (content hashes) and plain config values, so keys are stable across runs and change
exactly when an upstream artifact's content, a parameter, or the computing code changes. TASK_SOURCE alone
would miss an edit to the plain function a task calls; `ModuleSource` hashes that module's file as well.
Results (refs only: small) are persisted under the project's Prefect home.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy


@functools.lru_cache(maxsize=None)
def _module_hash(module_name: str) -> str:
    module = sys.modules.get(module_name)
    try:
        src = inspect.getsource(module) if module is not None else module_name
    except (OSError, TypeError):
        src = module_name
    return hashlib.sha256(src.encode()).hexdigest()


@dataclass
class ModuleSource(CachePolicy):
    """Cache key part: the source of the module where the task function is defined."""

    def compute_key(self, task_ctx, inputs: Optional[dict[str, Any]], flow_parameters, **kwargs) -> Optional[str]:
        if not task_ctx:
            return None
        return _module_hash(task_ctx.task.fn.__module__)


CACHE_POLICY = INPUTS + TASK_SOURCE + ModuleSource()


def quanta_task(fn=None, **kwargs):
    """`@quanta_task` = Prefect `@task` with the project's cache policy and persisted results."""
    options = dict(cache_policy=CACHE_POLICY, persist_result=True, retries=0)
    options.update(kwargs)
    if fn is None:
        return lambda f: task(f, **options)
    return task(fn, **options)

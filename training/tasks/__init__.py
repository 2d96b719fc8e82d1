"""Task plug-ins of the training framework (see training/tasks/base.py for what each one provides).

classification        classification.py   digits or a folder of class folders
detection             dense.py            generated scenes or a COCO dataset (boxes)
instance_segmentation dense.py            ... (boxes and masks)
keypoints             dense.py            ... (person boxes and joints)
semantic_segmentation semantic.py         generated scenes or a COCO dataset (masks -> class maps)
embedding             embedding.py        generated identities
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.tasks.base import TaskPlugin

# task name -> module defining it; modules are imported when a task is first asked for
TASK_MODULES = {
    "classification": "classification",
    "detection": "dense",
    "instance_segmentation": "dense",
    "keypoints": "dense",
    "semantic_segmentation": "semantic",
    "embedding": "embedding",
}
TASK_NAMES = tuple(TASK_MODULES)


def get_task(name: str) -> TaskPlugin:
    """The plug-in for `name`; each module has `PLUGINS: dict[str, TaskPlugin]`."""
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASK_NAMES)}")
    module = import_module(f"training.tasks.{TASK_MODULES[name]}")
    return module.PLUGINS[name]

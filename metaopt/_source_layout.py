"""Lets a source checkout import ``metaopt.tasks``, ``metaopt.meta_train`` and ``metaopt.evaluate``.

An installed metaopt maps the top-level folders ``tasks/``, ``meta_train/``, ``evaluate/`` and
``configs/`` into the ``metaopt`` namespace (see ``pyproject.toml``). When the package is imported
straight from a checkout (``python -m meta_train`` in the repository root), those folders sit beside
``metaopt/`` instead; this module points the namespace at them so that both layouts import the same
names.
"""

import os

__all__ = ["SUBPACKAGES", "extend_path"]

SUBPACKAGES = ("tasks", "meta_train", "evaluate", "configs")


def extend_path(package_path: list[str]) -> None:
    """Appends the checkout's root to ``package_path`` when run from a source checkout."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(package_dir)
    is_checkout = os.path.isfile(os.path.join(root, "pyproject.toml")) and all(
        os.path.isdir(os.path.join(root, name)) for name in SUBPACKAGES)
    already_installed = os.path.isdir(os.path.join(package_dir, "tasks"))
    if is_checkout and not already_installed and root not in package_path:
        package_path.append(root)

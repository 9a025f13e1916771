"""Inner tasks and task families for meta-training and evaluating learned optimizers.

Families (``list_families()``): "mlp_mnist1d", "mlp_digits" (MLP classifiers), "cnn_digits" (a small
CNN), "lm_stdlib" (a byte-level transformer LM on the Python standard library's sources),
"quadratic" (noisy quadratics) and "teacher_student" (MLP regression onto a random teacher). Every
model has a µP and an SP form (``parametrization``), a width set by ``base_width * width_multiplier``,
per-tensor µP metadata (``task.param_meta``), a bounded loss normaliser, a parameter count and a
FLOPs estimate. All data is local: nothing is downloaded.

Example::

    from metaopt.tasks import get_family
    family = get_family("mlp_mnist1d", widths=(64, 128), depths=(3,), activations=("relu",))
    task = family.task(family.sample(jax.random.key(0)))
    wide = family.task(dataclasses.replace(task.config, width_multiplier=16))
"""

from metaopt.tasks.base import Task, TaskFamily
from metaopt.tasks.cnn import CNNConfig, CNNDigitsFamily, CNNTask
from metaopt.tasks.family import ConfigFamily, config_to_dict
from metaopt.tasks.mlp import MLPConfig, MLPDigitsFamily, MLPMNIST1DFamily, MLPTask
from metaopt.tasks.quadratic import QuadraticConfig, QuadraticFamily, QuadraticTask
from metaopt.tasks.registry import get_family, list_families, register_family
from metaopt.tasks.teacher_student import (TeacherStudentConfig, TeacherStudentFamily,
                                           TeacherStudentTask)
from metaopt.tasks.transformer import LMConfig, LMStdlibFamily, LMTask

for _family in (MLPMNIST1DFamily, MLPDigitsFamily, CNNDigitsFamily, LMStdlibFamily, QuadraticFamily,
                TeacherStudentFamily):
    register_family(_family.name, _family)
del _family

__all__ = [
    "CNNConfig",
    "CNNDigitsFamily",
    "CNNTask",
    "ConfigFamily",
    "LMConfig",
    "LMStdlibFamily",
    "LMTask",
    "MLPConfig",
    "MLPDigitsFamily",
    "MLPMNIST1DFamily",
    "MLPTask",
    "QuadraticConfig",
    "QuadraticFamily",
    "QuadraticTask",
    "Task",
    "TaskFamily",
    "TeacherStudentConfig",
    "TeacherStudentFamily",
    "TeacherStudentTask",
    "config_to_dict",
    "get_family",
    "list_families",
    "register_family",
]

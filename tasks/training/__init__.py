"""Federated model training: Flower strategies over the governed Grid, DP-SGD at each node.

One task type, ``train``: ``architectures.py`` (the vetted networks and their
losses), ``params.py`` (the request), ``data.py`` (a node's encoded rows),
``node.py`` (local training with Opacus and held-out metrics; torch is
imported inside functions only), ``records.py`` (the typed releases a node
sends, and the replies a strategy reads, made from them), ``setup.py``
(agreed design and scaling), ``grid.py`` (the grid the strategy drives,
which turns releases into replies), ``server.py`` (FedAvg / FedProx / FedAdam
unchanged, metrics, progress) and ``model.py`` (the trained model returned
to the researcher).
"""

from oncofed.tasks.base import TaskType
from oncofed.tasks.training.model import TrainedModel, training_table
from oncofed.tasks.training.node import design_node, evaluate_node, train_node
from oncofed.tasks.training.params import TrainParams
from oncofed.tasks.training.records import RELEASES
from oncofed.tasks.training.server import train_serve

TASK: TaskType[TrainParams, TrainedModel] = TaskType(
    name="train",
    params=TrainParams,
    result=TrainedModel,
    serve=train_serve,
    node_handlers={"design": design_node},
    model_handlers={"train": train_node, "evaluate": evaluate_node},
    releases=RELEASES,
    summary="federated logistic regression, MLP or Cox-loss survival MLP with "
    "FedAvg/FedProx/FedAdam and optional DP-SGD",
    arguments=("features",),
    table=training_table,
)

__all__ = ["TASK", "TrainParams", "TrainedModel"]

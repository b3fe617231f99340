"""Recurrent cells: one module per cell, each behind the interface of :class:`Cell`.

``CELLS`` maps a cell's short name to its class; files and messages use the name.
"""
from .base import Cell, Prepared, Steps, Weights, chunk_backward, project
from .gru import GRUCell
from .lstm import LSTMCell

CELLS = {c.name: c for c in (GRUCell, LSTMCell)}

__all__ = ["Cell", "Prepared", "Steps", "Weights", "GRUCell", "LSTMCell", "CELLS",
           "chunk_backward", "project"]

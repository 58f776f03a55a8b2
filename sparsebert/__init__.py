"""Sparse-BERT mechanics for lottery-ticket search: prunable-weight registry, tickets (masks kept apart from
weights), one mask mechanism (torch parametrizations), OMP/random pruning, data, objectives and evaluation.

This package knows nothing of Ray: every long loop reports through a callback.
"""

__version__ = "0.1.0"

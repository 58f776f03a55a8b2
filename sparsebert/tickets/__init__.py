"""Tickets and their finders: the ticket format, one mask mechanism, OMP/random/IMP/TAMT, the MLM head fit,
pre-training-loss evaluation, and the content-addressed ticket store."""

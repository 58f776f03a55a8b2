"""Models: the prunable-weight registry, loading BERT/RoBERTa with an MLM head, the MLM and KD objectives."""

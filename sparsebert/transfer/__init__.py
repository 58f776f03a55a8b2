"""Downstream tasks and transfer: GLUE/SQuAD/polarity data, tokenization, batches, metrics, fine-tuning."""

"""Pre-training text: the embedded corpus and model set-up, tokenized text, MLM/KD batches."""

"""Fine-tuning and evaluation on the paper's benchmarks (GLUE, SQuAD-v2, BEIR) and the Rotten Tomatoes stand-ins."""

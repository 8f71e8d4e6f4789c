"""What is done with a model once it exists: export, embeddings, summaries, plots, reports."""

"""The embedded demo: a generated task family, a scripted annotator and a tiny tokenizer (no downloads)."""

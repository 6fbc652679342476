"""`ilf annotate`: a local web app where people write feedback and refinements on a model's failing
programs (Algorithm 1, step 2), stored in SQLite and exported as the Surge annotation JSONL."""

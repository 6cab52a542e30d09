"""Data pipeline: rows -> conversations -> (input_ids, labels) -> batches; validation and preview."""

"""Generation and evaluation: batched greedy decoding with a KV cache, metrics, comparison reports."""

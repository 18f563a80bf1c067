"""The model: a Llama-family decoder, its attention and KV pages, its weight and tokenizer loaders."""

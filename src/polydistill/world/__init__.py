"""The offline specialists world: domains, tokenizer styles, teacher architectures."""

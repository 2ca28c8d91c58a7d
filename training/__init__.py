"""How an adapter is made: data loaders, LoRA/QLoRA training and evaluation that write trained weights, metrics and model cards into the adapters/ catalogue."""

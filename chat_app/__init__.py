"""How people use the adapters: the Chainlit web app (chat, classify, extract, compare base vs fine-tuned) that reads the adapters/ catalogue."""
